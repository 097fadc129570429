//! Where a hit came from and what it saves ([`crate::Hit::source`]).

/// Which tier of a [`crate::Tiered`] answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HitTier {
    /// The fast tier had it.
    Fast,
    /// The shared tier had it (served from there, or copied into the fast tier first).
    Shared,
}

impl HitTier {
    /// `fast` or `shared`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            HitTier::Fast => "fast",
            HitTier::Shared => "shared",
        }
    }
}

/// Where a hit came from and what it saves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HitSource {
    /// The tier that answered, when a [`crate::Tiered`] did (`None`: no tiers).
    pub tier: Option<HitTier>,
    /// The backend the hit was found in ([`crate::CacheBackend::name`] of its
    /// storage; for a shared tier's hit copied into the fast tier, the shared tier's).
    pub backend: &'static str,
    /// How long the task ran when it was stored: the time a replay saves.
    pub duration_ms: u64,
    /// The bytes of its files and logs.
    pub bytes: u64,
}
