//! The Python the interoperability tests run: a virtualenv with the reference ARCP SDK (and
//! the gRPC tools of `examples/python`), built from `tests/interop/requirements.txt` once and
//! reused while that file is unchanged. Without `python3` or PyPI the tests fail and say so.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use super::install_lock;

/// The virtualenv's interpreter; panics, saying why, when it cannot be built.
pub fn interop_python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PYTHON.get_or_init(build_venv) {
        Ok(python) => python,
        Err(why) => panic!("the Python interop environment is unavailable: {why}"),
    }
}

/// Plain `python3`, for scripts without dependencies; panics when there is none.
pub fn system_python() -> &'static str {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("python3 --version failed ({})", out.status)),
        Err(e) => Err(format!("cannot run python3: {e}")),
    });
    if let Err(why) = checked {
        panic!("these tests need python3 on PATH: {why}");
    }
    "python3"
}

fn build_venv() -> Result<PathBuf, String> {
    let requirements = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let venv = tmp.join("interop-venv");
    let ready = |venv: &Path| {
        venv.join("bin/python").exists()
            && std::fs::read_to_string(venv.join("installed-requirements.txt"))
                .ok()
                .as_deref()
                == Some(wanted.as_str())
    };
    if ready(&venv) {
        return Ok(venv.join("bin/python"));
    }
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = cmd
            .output()
            .map_err(|e| format!("{what}: cannot run {cmd:?}: {e} (is python3 installed?)"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    };
    // Built in place, one process at a time: test processes running at once (nextest runs each
    // test in its own) wait on the lock rather than build over one another. Not built aside and
    // renamed: a virtualenv's scripts name their interpreter by its path, so a moved one's
    // `bin/grpcurl` would point nowhere. The stamp is written last, so a build that was cut
    // short is never taken for a whole one.
    let lock = install_lock(&tmp.join("interop-venv.lock"), "the virtualenv")?;
    if !ready(&venv) {
        let _ = std::fs::remove_dir_all(&venv);
        run(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "creating the virtualenv (python3 -m venv; on Debian: apt-get install python3-venv)",
        )?;
        run(
            Command::new(venv.join("bin/python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                    "-r",
                ])
                .arg(&requirements),
            "installing tests/interop/requirements.txt from PyPI",
        )?;
        std::fs::write(venv.join("installed-requirements.txt"), &wanted)
            .map_err(|e| format!("cannot write the requirements stamp: {e}"))?;
    }
    drop(lock);
    if ready(&venv) {
        Ok(venv.join("bin/python"))
    } else {
        Err(format!(
            "{} is not usable after building it",
            venv.display()
        ))
    }
}
