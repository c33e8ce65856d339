//! The one random number generator used everywhere: ChaCha8, seeded, with a
//! state that can be saved and restored (resumable runs), and the same
//! stream on every platform.

pub use rand::{Rng as _, SeedableRng as _};

/// The generator type: ChaCha8 from `rand_chacha` (serializable with serde,
/// so a checkpoint can hold its state).
pub type Rng = rand_chacha::ChaCha8Rng;

/// A generator started from `seed` (`SeedableRng::seed_from_u64`); the same
/// seed gives the same stream on every platform.
pub fn seeded(seed: u64) -> Rng {
    <Rng as rand::SeedableRng>::seed_from_u64(seed)
}

/// A derived, independent stream (e.g. one per dropout layer), so adding a
/// layer does not shift the draws of the others.
pub fn fork(rng: &mut Rng) -> Rng {
    use rand::Rng as _;
    seeded(rng.gen())
}
