//! Arabic/English text handling that every other part relies on: turning a
//! file's bytes into text ([`decode`]), the three normalization forms
//! ([`normalize`]: what the model learns, what search matches, what a terminal
//! without bidi support shows), per-text tags ([`tags`]) and seeded
//! perturbations for robustness evaluation ([`perturb`]). Everything here is a
//! pure function of its input: no files, no clocks, no global state beyond
//! lazily built lookup tables.

pub mod chars;
pub mod decode;
mod dialect;
mod display;
pub use display::mirror;
pub mod normalize;
pub mod perturb;
mod shape;
pub mod tags;
