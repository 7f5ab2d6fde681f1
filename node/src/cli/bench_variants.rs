//! The sandbox settings `bench sandbox` (in [`super::bench`]) times in one run, each
//! against native code: production and the variants that switch one check or
//! rewrite off, or measure another mechanism, so that each lever's cost is a ratio
//! within the run. A variant is named, not numbered: [`Variant`] indexes
//! [`PerVariant`], which holds a sandbox, a time or a load time per variant.

use std::ops::{Index, IndexMut};

use crate::sandbox::{Guard, NanMode, Sandbox, SandboxConfig};

/// One engine setting `bench sandbox` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Variant {
    /// Every production setting: fuel in slices as the only interruption mechanism,
    /// NaN canonicalisation where a NaN can be seen (the module rewrite), loop
    /// unrolling, the multiply rewrite, the instance pool.
    Production,
    /// Production with epochs (a ticker thread) on top of fuel for the guard, as the
    /// sandbox ran before issue 18.
    Epochs,
    /// Production without any NaN canonicalisation.
    NoNanCanon,
    /// Production without fuel (so without any guard).
    NoFuel,
    /// No fuel, no guard, no NaN canonicalisation, no loop unrolling, no multiply
    /// rewrite: wasmtime's plain speed on the module as sent.
    Bare,
    /// Production without the pool and without guard regions, so that every memory
    /// access is bounds-checked explicitly.
    BoundsChecked,
    /// Production with Cranelift canonicalising every NaN-producing instruction
    /// instead of the rewrite (how the sandbox ran before).
    EveryOp,
    /// Production with fuel charged only at branches and calls ([`branches_only`]):
    /// the loop-header checks stay, most per-block updates go.
    BranchFuel,
    /// No fuel; epochs (a ticker thread) as the guard: the loop-header check alone.
    EpochsOnly,
    /// Production without loop unrolling: a fuel check at every loop header.
    NoUnroll,
}

/// How many variants there are.
const COUNT: usize = Variant::ALL.len();

impl Variant {
    /// Every variant, production first (the others' fuel is checked against it),
    /// and [`Variant::NoNanCanon`] before [`Variant::EveryOp`] (likewise).
    pub(super) const ALL: [Variant; 10] = [
        Variant::Production,
        Variant::Epochs,
        Variant::NoNanCanon,
        Variant::NoFuel,
        Variant::Bare,
        Variant::BoundsChecked,
        Variant::EveryOp,
        Variant::BranchFuel,
        Variant::EpochsOnly,
        Variant::NoUnroll,
    ];

    fn config(self) -> anyhow::Result<SandboxConfig> {
        let production = SandboxConfig::default();
        let unguarded = SandboxConfig {
            fuel: false,
            guard: Guard::Off,
            ..production.clone()
        };
        Ok(match self {
            Variant::Production => production,
            Variant::Epochs => SandboxConfig {
                guard: Guard::Epochs,
                ..production
            },
            Variant::NoNanCanon => SandboxConfig {
                nan: NanMode::Off,
                ..production
            },
            Variant::NoFuel => unguarded,
            Variant::Bare => SandboxConfig {
                nan: NanMode::Off,
                unroll_loops: false,
                reduce_multiplies: false,
                ..unguarded
            },
            Variant::BoundsChecked => SandboxConfig {
                pooling: false,
                explicit_bounds_checks: true,
                ..production
            },
            Variant::EveryOp => SandboxConfig {
                nan: NanMode::EveryOp,
                ..production
            },
            Variant::BranchFuel => SandboxConfig {
                operator_cost: Some(branches_only()?),
                ..production
            },
            Variant::EpochsOnly => SandboxConfig {
                guard: Guard::Epochs,
                ..unguarded
            },
            Variant::NoUnroll => SandboxConfig {
                unroll_loops: false,
                ..production
            },
        })
    }
}

/// One value per [`Variant`], indexed by it.
#[derive(Clone, Debug)]
pub(super) struct PerVariant<T>([T; COUNT]);

impl<T> PerVariant<T> {
    /// The same value for every variant.
    pub(super) fn filled(value: T) -> Self
    where
        T: Clone,
    {
        Self(std::array::from_fn(|_| value.clone()))
    }

    /// Each variant's value, from a function of the variant.
    pub(super) fn try_new(mut f: impl FnMut(Variant) -> anyhow::Result<T>) -> anyhow::Result<Self> {
        let mut values = Vec::with_capacity(COUNT);
        for variant in Variant::ALL {
            values.push(f(variant)?);
        }
        let values = values
            .try_into()
            .map_err(|_| anyhow::anyhow!("not one value per bench variant"))?;
        Ok(Self(values))
    }

    /// Every value with its variant, in [`Variant::ALL`]'s order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (Variant, &T)> {
        Variant::ALL.into_iter().zip(&self.0)
    }
}

impl<T> Index<Variant> for PerVariant<T> {
    type Output = T;
    fn index(&self, variant: Variant) -> &T {
        &self.0[variant as usize]
    }
}

impl<T> IndexMut<Variant> for PerVariant<T> {
    fn index_mut(&mut self, variant: Variant) -> &mut T {
        &mut self.0[variant as usize]
    }
}

/// The sandboxes `bench sandbox` builds, all in the same run.
pub(super) struct Variants {
    /// One sandbox per timed variant.
    pub(super) timed: PerVariant<Sandbox>,
    /// Production without the instance pool (fresh mappings per call); timed for the
    /// per-call overhead only.
    pub(super) no_pool: Sandbox,
}

impl Variants {
    pub(super) fn new() -> anyhow::Result<Self> {
        Ok(Self {
            timed: PerVariant::try_new(|v| Ok(Sandbox::new(v.config()?)?))?,
            no_pool: Sandbox::new(SandboxConfig {
                pooling: false,
                ..SandboxConfig::default()
            })?,
        })
    }

    pub(super) fn production(&self) -> &Sandbox {
        &self.timed[Variant::Production]
    }
}

/// wasmtime's operator-cost table with every operator free except those that branch
/// or call: fuel then counts control transfers, not operators (a bench variant only;
/// the grid's fuel is wasmtime's default table).
fn branches_only() -> anyhow::Result<wasmtime::OperatorCost> {
    const CHARGED: [&str; 10] = [
        "If",
        "Br",
        "BrIf",
        "BrTable",
        "Call",
        "CallIndirect",
        "CallRef",
        "ReturnCall",
        "ReturnCallIndirect",
        "ReturnCallRef",
    ];
    // The table has a field per operator and no way to walk them; its serde form does.
    let mut table = serde_json::to_value(wasmtime::OperatorCost::default())?;
    if let Some(fields) = table.as_object_mut() {
        for (name, cost) in fields.iter_mut() {
            if cost.is_u64() {
                *cost = serde_json::json!(u8::from(CHARGED.contains(&name.as_str())));
            }
        }
    }
    Ok(serde_json::from_value(table)?)
}
