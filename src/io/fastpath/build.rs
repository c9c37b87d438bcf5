//! Build script (Cargo.toml `build`): compiles the XDP fast path (`turn_xdp.bpf.c`, issue 18) to a
//! BPF object with clang, for `src/io/fastpath/mod.rs` to embed. No prebuilt object is committed:
//! clang (Debian `clang`) and the BPF helper headers (`libbpf-dev`) are build dependencies, and
//! the kernel UAPI headers come from `linux-libc-dev`. `CLANG=/path/to/clang` picks another clang.

use std::path::PathBuf;
use std::process::Command;

const SOURCE: &str = "src/io/fastpath/turn_xdp.bpf.c";

fn main() {
    println!("cargo:rerun-if-changed={SOURCE}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let object = out.join("turn_xdp.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_owned());
    // The UAPI headers' <asm/types.h> lives under the host's multiarch directory on Debian.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I{multiarch}"))
        .args(["-c", SOURCE, "-o"])
        .arg(&object)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{clang} failed to compile {SOURCE} ({s})"),
        Err(e) => panic!(
            "cannot run {clang} ({e}): the XDP fast path is built from C at build time; \
             install clang and libbpf-dev (Debian: apt-get install clang libbpf-dev)"
        ),
    }
}
