//! The bench's floor: one empty `tp_btf` program on each hook the agent attaches, so that the
//! bench can say what any tool pays for being attached at all, and how far above that each of
//! the agent's programs is.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{programs::BtfTracePoint, Btf, Ebpf};
use serde_json::Value;
use taskscope_common::contract::HOOKS;

/// The empty programs, attached while this lives.
pub struct Floor {
    /// One object per hook: a `tp_btf` program is loaded for one tracepoint.
    _objects: Vec<Ebpf>,
    /// Tracepoint -> the kernel's id of the empty program on it.
    pub programs: BTreeMap<&'static str, u64>,
}

/// Where the agent's build script put the kernel objects (`taskscope-floor` among them).
fn objects_dir() -> Result<PathBuf> {
    let out = crate::cargo()
        .args(["build", "--release", "--package", "taskscope"])
        .arg("--message-format=json")
        .output()
        .context("cargo build")?;
    if !out.status.success() {
        bail!("cargo build --package taskscope failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|message| {
            message["reason"] == "build-script-executed"
                && message["package_id"]
                    .as_str()
                    .is_some_and(|id| id.contains("#taskscope@"))
        })
        .and_then(|message| message["out_dir"].as_str().map(PathBuf::from))
        .context("cargo named no build script output of the taskscope package")
}

impl Floor {
    /// Attaches the empty program to each hook the agent would attach on this kernel: every
    /// primary hook, and a fallback only where its primary does not exist.
    pub fn attach() -> Result<Floor> {
        let object = objects_dir()?.join("taskscope-floor");
        let btf = Btf::from_sys_fs().context("the kernel's BTF")?;
        let mut floor = Floor {
            _objects: Vec::new(),
            programs: BTreeMap::new(),
        };
        for hook in HOOKS {
            if hook
                .instead_of
                .is_some_and(|primary| floor.programs.contains_key(primary))
            {
                continue;
            }
            match attach_one(&object, hook.tracepoint, &btf) {
                Ok((ebpf, id)) => {
                    floor._objects.push(ebpf);
                    floor.programs.insert(hook.tracepoint, id);
                }
                // A tracepoint this kernel does not have: the agent uses its fallback.
                Err(e) if hook.since.is_some() => {
                    println!("  floor: {} not attached ({e:#})", hook.tracepoint)
                }
                Err(e) => return Err(e),
            }
        }
        Ok(floor)
    }
}

fn attach_one(object: &Path, tracepoint: &str, btf: &Btf) -> Result<(Ebpf, u64)> {
    let mut ebpf = Ebpf::load_file(object).with_context(|| format!("load {object:?}"))?;
    let program: &mut BtfTracePoint = ebpf
        .program_mut("ts_floor")
        .context("no program ts_floor in the floor object")?
        .try_into()?;
    program
        .load(tracepoint, btf)
        .with_context(|| format!("load the floor program for {tracepoint}"))?;
    program
        .attach()
        .with_context(|| format!("attach the floor program to {tracepoint}"))?;
    let id = program.info()?.id();
    Ok((ebpf, u64::from(id)))
}
