//! The GPU top-k kernel's logic, checked on the CPU: `topk_emulation.cpp` includes
//! `src/gpu/topk.cu`, runs each thread block with one OS thread per CUDA thread, and compares
//! every chunk's top-k with a sort. Needs a C++20 compiler (`c++`); without one it says so and
//! passes, since the CUDA build itself is checked by `ralm bench search` on a GPU.

use std::path::Path;
use std::process::Command;

#[test]
fn topk_kernel_matches_a_sort() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("ralm-topk-emulation-{}", std::process::id()));
    let compiled = Command::new("c++")
        .args(["-std=c++20", "-O2", "-pthread", "-Wno-attributes", "-I"])
        .arg(dir.join("src/gpu"))
        .arg(dir.join("tests/topk_emulation.cpp"))
        .arg("-o")
        .arg(&out)
        .output();
    let compiled = match compiled {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skipping the top-k kernel emulation: no C++ compiler (c++: {e})");
            return;
        }
    };
    assert!(
        compiled.status.success(),
        "compiling the emulation failed:\n{}",
        String::from_utf8_lossy(&compiled.stderr)
    );
    let run = Command::new(&out).output().expect("running the emulation");
    let _ = std::fs::remove_file(&out);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "kernel emulation failed:\n{stdout}");
    assert!(stdout.contains("PASS (0 mismatches)"), "{stdout}");
}
