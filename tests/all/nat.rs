//! Behind NAT, on loopback (the NAT lab itself, with namespaces and nftables routers,
//! is `node/tests/nat_lab.rs`): a bootstrap address by DNS name, a declared public
//! node that relays, and a node that reserves a slot on it and says so in `status`.

use std::time::Duration;

use peergrid_node::net::reachability::Verdict;
use peergrid_tests::{TestNet, wait_for};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_through_a_dns4_bootstrap_address_and_is_reached_directly() {
    // Node 0 on 127.0.0.1, which `localhost` resolves to.
    let net = TestNet::spawn_with(1, |_, c| {
        c.net.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr")];
    })
    .await;
    let addr = net.node(0).listen_addrs().await[0].to_string();
    let port = addr
        .split("/tcp/")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .expect("a tcp port");
    let dns = format!("/dns4/localhost/tcp/{port}/p2p/{}", net.node(0).peer_id());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = peergrid_tests::testnet::test_config(dir.path(), &[dns]);
    let node = peergrid_node::Node::spawn(config)
        .await
        .expect("node starts");
    let first = net.node(0).peer_id().to_string();
    let info = wait_for("the DNS bootstrap peer", Duration::from_secs(30), || {
        let net = node.net().clone();
        let first = first.clone();
        async move {
            net.peers()
                .await
                .into_iter()
                .find(|p| p.peer_id == first && p.connected)
        }
    })
    .await;
    assert_eq!(info.path.as_deref(), Some("direct"), "{info:?}");
    assert_eq!(info.via, None);
    node.shutdown().await;
    drop(dir);
    net.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_public_node_relays_and_a_private_one_reserves_a_slot_on_it() {
    // Node 0 declares its address public (a VPS's --external-addr); node 1 does not.
    let net = TestNet::spawn_with(2, |i, c| {
        if i == 0 {
            c.net.nat.external_addrs = c.net.listen.clone();
        }
    })
    .await;
    let public = wait_for(
        "node 0 to be public and relay",
        Duration::from_secs(10),
        || {
            let net = net.node(0).net().clone();
            async move {
                net.status()
                    .await
                    .and_then(|s| s.reachability)
                    .filter(|r| r.verdict == Verdict::Public && r.relaying)
            }
        },
    )
    .await;
    assert!(
        public.text.starts_with("public at /ip4/127."),
        "{}",
        public.text
    );
    let relay = net.node(0).peer_id().to_string();
    let reach = wait_for(
        "node 1 to hold a reservation on node 0",
        Duration::from_secs(30),
        || {
            let net = net.node(1).net().clone();
            async move {
                net.status()
                    .await
                    .and_then(|s| s.reachability)
                    .filter(|r| r.verdict == Verdict::Relayed)
            }
        },
    )
    .await;
    assert!(
        reach
            .text
            .starts_with("behind NAT, reachable through relay /ip4/127.")
            && reach.text.contains(&relay),
        "{}",
        reach.text
    );
    assert!(
        !reach.relaying,
        "a node reached through a relay relays for nobody"
    );
    net.shutdown().await;
}
