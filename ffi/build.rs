//! Generates the C header from `src/` with cbindgen (a pinned build dependency) into
//! `OUT_DIR/aiolock.h`. It never writes into the source tree: the committed
//! `include/aiolock.h` is compared with it by the test `header_is_fresh` and refreshed
//! by `ffi/gen-header.sh`.

use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config_path = dir.join("cbindgen.toml");
    println!("cargo::rerun-if-changed={}", config_path.display());
    println!("cargo::rerun-if-changed={}", dir.join("src").display());
    let config = cbindgen::Config::from_file(&config_path).unwrap_or_else(|e| fail(&e));
    // The source files, not the crate: no `cargo metadata` run from inside the build.
    // Items under `#[cfg(feature = ...)]` are written behind the `[defines]` of the
    // config whatever features this build has, so the header is the same for all.
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(dir.join("src/lib.rs"))
        .generate()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let out =
        Path::new(&std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("aiolock.h");
    bindings.write_to_file(&out);
}

fn fail(message: &str) -> ! {
    eprintln!("aiolock-ffi: cannot generate the C header: {message}");
    std::process::exit(1)
}
