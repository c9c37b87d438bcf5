//! The fuzz targets of `fuzz/` as a plain test on stable (issue 9): each target's committed
//! corpus (`fuzz/seeds/TARGET/`), plus a few thousand inputs made here from it (mutations,
//! truncations, random bytes, seeded so a failure repeats). `fuzz/run SECONDS TARGET` explores
//! the same code for as long as one likes; a crasher it finds is copied into `fuzz/seeds/TARGET/`
//! and so runs here from then on.

#[path = "../fuzz/targets.rs"]
mod targets;

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Generated inputs per target, on top of the corpus (the conf parser builds its clap command
/// per input: slow in a debug build, so fewer).
const GENERATED: usize = 5000;
const GENERATED_CONF: usize = 300;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let out: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
    assert!(!out.is_empty(), "{} is empty", dir.display());
    out
}

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        match rng.gen_range(0..5) {
            0 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] ^= 1 << rng.gen_range(0..8);
            }
            1 if !v.is_empty() => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            2 => v.truncate(rng.gen_range(0..=v.len())),
            3 => {
                let at = rng.gen_range(0..=v.len());
                let junk: Vec<u8> = (0..rng.gen_range(1..16)).map(|_| rng.gen()).collect();
                v.splice(at..at, junk);
            }
            _ if v.len() >= 4 => {
                // An interesting 16-bit value at a 2-aligned offset (lengths, types).
                let i = 2 * rng.gen_range(0..v.len() / 2);
                let x: u16 = [0, 1, 3, 4, 0x7FFF, 0x8000, 0xFFFF, rng.gen()][rng.gen_range(0..8)];
                v[i..i + 2].copy_from_slice(&x.to_be_bytes());
            }
            _ => {}
        }
    }
    v
}

fn run(target: &str, f: fn(&[u8]), count: usize) {
    let seeds = corpus(target);
    for s in &seeds {
        f(s);
    }
    let mut rng = StdRng::seed_from_u64(0x15_5EED);
    for i in 0..count {
        let input = if i % 5 == 0 {
            (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect()
        } else {
            let k = rng.gen_range(0..seeds.len());
            mutate(&mut rng, &seeds[k])
        };
        f(&input);
    }
}

#[test]
fn stun_decode() {
    run("stun_decode", targets::stun_decode, GENERATED);
}

#[test]
fn channel_data() {
    run("channel_data", targets::channel_data, GENERATED);
}

#[test]
fn framing() {
    run("framing", targets::framing, GENERATED);
}

#[test]
fn conf() {
    run("conf", targets::conf, GENERATED_CONF);
}

#[test]
fn engine() {
    run("engine", targets::engine, GENERATED);
}
