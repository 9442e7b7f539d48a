//! Writes the starting corpus: `cargo run --example seeds` (from fuzz/).
//! Each dispatch seed is also a valid frame-target input after its first byte.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for target in ["dispatch", "frame"] {
        std::fs::create_dir_all(root.join(target))?;
    }
    for (i, seed) in tokend_fuzz::seeds().iter().enumerate() {
        std::fs::write(root.join("dispatch").join(format!("seed-{i:02}")), seed)?;
        std::fs::write(root.join("frame").join(format!("seed-{i:02}")), &seed[1..])?;
    }
    println!(
        "wrote {} seeds per target under {}",
        tokend_fuzz::seeds().len(),
        root.display()
    );
    Ok(())
}
