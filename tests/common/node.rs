//! The Node the interoperability tests run: `examples/node`'s packages installed with `npm ci`
//! from its `package-lock.json` into a directory under `target/` (never into the source tree),
//! once, and reused while that lock file is unchanged. Without `node`, `npm` or the npm registry
//! the tests fail and say so.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::install_lock;

/// The `node_modules` directory `examples/node` runs with; panics, saying why, when it cannot be
/// installed.
pub fn node_modules() -> &'static Path {
    static MODULES: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match MODULES.get_or_init(install) {
        Ok(modules) => modules,
        Err(why) => panic!("the Node interop environment is unavailable: {why}"),
    }
}

fn install() -> Result<PathBuf, String> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/node");
    let read = |name: &str| {
        std::fs::read_to_string(example.join(name))
            .map_err(|e| format!("cannot read examples/node/{name}: {e}"))
    };
    let (manifest, lock) = (read("package.json")?, read("package-lock.json")?);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-example");
    let stamp = dir.join("installed-package-lock.json");
    let modules = dir.join("node_modules");
    let ready = || {
        modules.is_dir() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(lock.as_str())
    };
    for tool in ["node", "npm"] {
        match Command::new(tool).arg("--version").output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(format!("{tool} --version failed ({})", out.status)),
            Err(e) => return Err(format!("cannot run {tool} (is Node installed?): {e}")),
        }
    }
    if ready() {
        return Ok(modules);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // One install at a time: test processes running at once wait on the lock rather than
    // install over one another; the stamp is written last, so a cut-short install is redone.
    let lock_file = install_lock(&dir.join(".lock"), "the Node packages")?;
    if !ready() {
        for (name, text) in [("package.json", &manifest), ("package-lock.json", &lock)] {
            std::fs::write(dir.join(name), text)
                .map_err(|e| format!("cannot copy examples/node/{name}: {e}"))?;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("cannot run npm ci: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "npm ci (examples/node/package-lock.json, from the npm registry) failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        std::fs::write(&stamp, &lock).map_err(|e| format!("cannot write the stamp: {e}"))?;
    }
    drop(lock_file);
    Ok(modules)
}
