//! The component plugins shipped inside the `tandem` binary.

use std::path::{Path, PathBuf};

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// The bundled plugin whose directory (and component) name is `name`.
pub fn get(name: &str) -> Option<&'static [u8]> {
    BUNDLED.iter().find(|(n, _)| *n == name).map(|(_, b)| *b)
}

/// Writes every bundled plugin into `dir` as `NAME.wasm` and returns (name, path) pairs.
pub fn write_all(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::with_capacity(BUNDLED.len());
    for (name, bytes) in BUNDLED {
        let path = dir.join(format!("{name}.wasm"));
        let unchanged = std::fs::read(&path).map(|b| b == *bytes).unwrap_or(false);
        if !unchanged {
            let tmp = path.with_extension("wasm.tmp");
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)?;
        }
        out.push(((*name).to_owned(), path));
    }
    Ok(out)
}
