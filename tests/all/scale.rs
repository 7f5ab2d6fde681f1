//! Discovery at scale with real nodes on loopback: a node that is connected to few
//! peers finds more when it has demand (random walks in the DHT), and only then.

use std::time::Duration;

use peergrid_tests::{TestNet, wait_for};

/// Peers with a fresh advert lending something, in node `i`'s view, asking as the
/// scheduler asks (which is demand).
async fn candidates(net: &TestNet, i: usize) -> usize {
    net.node(i)
        .net()
        .peers()
        .await
        .iter()
        .filter(|p| p.advert.as_ref().is_some_and(|a| a.slots_total > 0))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_finds_candidates_beyond_the_peers_a_node_is_connected_to() {
    const N: usize = 12;
    // Every node dials at most one peer the DHT finds: node 0 (the bootstrap)
    // hears of everyone, the others of only a few, until they have demand.
    let net = TestNet::spawn_with(N, |_, config| {
        config.net.discovery.dial_target = 1;
        config.net.discovery.want = N - 1;
    })
    .await;
    let last = N - 1;
    let found = wait_for(
        "the last node to find every other node's advert by sampling",
        Duration::from_secs(90),
        || async {
            let seen = candidates(&net, last).await;
            (seen >= N - 1).then_some(seen)
        },
    )
    .await;
    assert_eq!(found, N - 1);
    let status = net.node(last).net().status().await.expect("running");
    assert!(
        status.connected_peers >= N - 1,
        "walks dialled the peers they found: {status:?}"
    );
    net.shutdown().await;
}

/// A node's first start measures its fuel speed in the background (no advert says a
/// speed before it is measured), keeps it in the data dir, and sets `--max-fuel
/// auto` from it; a restart takes the kept figure at once instead of measuring.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fuel_speed_is_measured_once_kept_and_advertised_only_when_known() {
    let mut net = TestNet::spawn(2).await;
    let worker = net.node(1).peer_id().to_string();
    let fuel = wait_for(
        "node 0 to hold node 1's advert",
        Duration::from_secs(60),
        || async {
            net.node(0)
                .net()
                .peers()
                .await
                .into_iter()
                .find(|p| p.peer_id == worker)
                .and_then(|p| p.advert)
                .map(|a| a.fuel_per_sec)
        },
    )
    .await;
    assert!(fuel > 0, "the first advert carries a measured speed");
    let state = net.node(1).state().clone();
    assert_eq!(state.fuel_per_sec(), fuel);
    assert_eq!(
        state.worker().limits().max_fuel,
        peergrid_node::worker::limits::default_max_fuel(fuel),
        "--max-fuel auto follows the measured speed"
    );
    assert!(
        net.nodes[1].dir.path().join("fuel-speed.json").exists(),
        "the figure is kept in the data dir"
    );
    drop(state);
    net.restart(1).await.expect("restarts");
    let state = net.node(1).state();
    assert_eq!(
        state.fuel_per_sec(),
        fuel,
        "a restart takes the kept figure at once, without measuring"
    );
    assert_eq!(
        state.worker().limits().max_fuel,
        peergrid_node::worker::limits::default_max_fuel(fuel)
    );
    net.shutdown().await;
}
