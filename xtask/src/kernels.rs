//! The kernels of the test matrix: Debian's packages, downloaded with `apt-get download` and
//! unpacked (never installed) under `~/.cache/taskscope/kernels/<package>/`: `vmlinuz`,
//! `config` and `modules/NN-<name>.ko`, the modules the guest loads for its virtio disk, in
//! load order. tests/tests/kernel_matrix.rs boots each in qemu.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{output, run, tools_dir};

/// One kernel line of the matrix: Debian package names `<prefix><number><suffix>`; the newest
/// number in the archive is taken.
struct KernelLine {
    prefix: &'static str,
    suffix: &'static str,
}

/// Debian 12's default kernel (the 6.1 LTS line), its PREEMPT_RT and cloud builds, and the
/// 6.12 LTS line from bookworm's security updates, with its PREEMPT_RT build. The host's own
/// kernel is covered by the other tests.
const MATRIX: [KernelLine; 5] = [
    KernelLine {
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64-unsigned",
    },
    KernelLine {
        prefix: "linux-image-6.1.0-",
        suffix: "-rt-amd64-unsigned",
    },
    KernelLine {
        prefix: "linux-image-6.1.0-",
        suffix: "-cloud-amd64-unsigned",
    },
    KernelLine {
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64-unsigned",
    },
    KernelLine {
        prefix: "linux-image-6.12.",
        suffix: "+deb12-rt-amd64-unsigned",
    },
];

/// Modules the guest needs for its virtio disk, where the kernel builds them as modules.
const GUEST_MODULES: [&str; 2] = ["virtio_pci", "virtio_blk"];

fn kernels_dir() -> PathBuf {
    tools_dir().join("kernels")
}

/// The newest package of `line` among `names` (apt-cache's list).
fn newest<'a>(line: &KernelLine, names: &'a str) -> Option<&'a str> {
    names
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| {
            let number = name.strip_prefix(line.prefix)?.strip_suffix(line.suffix)?;
            let number: u32 = number.parse().ok()?;
            Some((number, name))
        })
        .max()
        .map(|(_, name)| name)
}

/// Downloads and unpacks each kernel of the matrix that is not in the cache yet. Returns their
/// directories, in matrix order.
pub(crate) fn prepare() -> Result<Vec<PathBuf>> {
    let names =
        output(Command::new("apt-cache").args(["search", "--names-only", r"^linux-image-6\."]))?;
    let mut dirs = Vec::new();
    for line in &MATRIX {
        let Some(package) = newest(line, &names) else {
            bail!(
                "no {}N{} package in the apt archive (apt-get update?)",
                line.prefix,
                line.suffix
            );
        };
        let dir = kernels_dir().join(package);
        if !dir.join("vmlinuz").exists() {
            unpack(package, &dir).with_context(|| format!("preparing kernel {package}"))?;
        }
        dirs.push(dir);
    }
    Ok(dirs)
}

/// `apt-get download` then `dpkg-deb -x` of the kernel image, the config and the guest modules.
fn unpack(package: &str, dir: &PathBuf) -> Result<()> {
    let work = kernels_dir().join(format!("{package}.partial"));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    run(Command::new("apt-get")
        .args(["download", package])
        .current_dir(&work))?;
    let deb = std::fs::read_dir(&work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.join("tree");
    std::fs::create_dir_all(&tree)?;
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    std::fs::remove_file(&deb)?;

    let boot = tree.join("boot");
    let find = |prefix: &str| -> Result<PathBuf> {
        std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .with_context(|| format!("no boot/{prefix}* in {package}"))
    };
    let out = work.join("out");
    std::fs::create_dir_all(out.join("modules"))?;
    std::fs::copy(find("vmlinuz-")?, out.join("vmlinuz"))?;
    std::fs::copy(find("config-")?, out.join("config"))?;
    let modules_root = std::fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .context("no lib/modules/<release>")?;
    let release = modules_root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    std::fs::write(out.join("release"), &release)?;
    // Debian's package leaves modules.dep to the installation: make it here.
    run(Command::new("depmod").arg("-b").arg(&tree).arg(&release))?;
    let dep = std::fs::read_to_string(modules_root.join("modules.dep"))
        .context("depmod wrote no modules.dep")?;
    for (index, module) in load_order(&dep, &GUEST_MODULES).iter().enumerate() {
        let source = modules_root.join(module);
        let name = module
            .rsplit('/')
            .next()
            .unwrap_or(module)
            .trim_end_matches(".xz")
            .to_string();
        let target = out.join("modules").join(format!("{index:02}-{name}"));
        if module.ends_with(".xz") {
            let decompressed = Command::new("xz")
                .arg("-dc")
                .arg(&source)
                .output()
                .context("xz")?;
            if !decompressed.status.success() {
                bail!("xz -dc {} failed", source.display());
            }
            std::fs::write(&target, decompressed.stdout)?;
        } else {
            std::fs::copy(&source, &target)?;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&out, dir)?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// The modules (paths relative to lib/modules/<release>) to load for `wanted`, dependencies
/// first, from `modules.dep`. A wanted module built into the kernel is not in it: skipped.
fn load_order(modules_dep: &str, wanted: &[&str]) -> Vec<String> {
    let deps_of = |path: &str| -> Vec<String> {
        modules_dep
            .lines()
            .find_map(|l| {
                let (module, deps) = l.split_once(':')?;
                (module == path).then(|| deps.split_whitespace().map(str::to_string).collect())
            })
            .unwrap_or_default()
    };
    let mut order: Vec<String> = Vec::new();
    for name in wanted {
        let Some(path) = modules_dep.lines().find_map(|l| {
            let module = l.split_once(':')?.0;
            let file = module.rsplit('/').next()?;
            let stem = file.split(".ko").next()?;
            (stem == *name).then(|| module.to_string())
        }) else {
            continue;
        };
        // modules.dep lists a module's dependencies so that the last is loaded first.
        for dependency in deps_of(&path).into_iter().rev().chain([path]) {
            if !order.contains(&dependency) {
                order.push(dependency);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_package_of_a_line_is_taken() {
        let names = "linux-image-6.1.0-47-amd64-unsigned - Linux 6.1\n\
                     linux-image-6.1.0-57-rt-amd64-unsigned - Linux 6.1 RT\n\
                     linux-image-6.1.0-9-amd64-unsigned - Linux 6.1\n\
                     linux-image-6.1.0-57-amd64 - Linux 6.1 (signed)\n\
                     linux-image-6.12.115+deb12-amd64-unsigned - Linux 6.12\n\
                     linux-image-6.12.9+deb12-amd64-unsigned - Linux 6.12\n";
        assert_eq!(
            newest(&MATRIX[0], names),
            Some("linux-image-6.1.0-47-amd64-unsigned")
        );
        assert_eq!(
            newest(&MATRIX[1], names),
            Some("linux-image-6.1.0-57-rt-amd64-unsigned")
        );
        assert_eq!(
            newest(&MATRIX[3], names),
            Some("linux-image-6.12.115+deb12-amd64-unsigned")
        );
        assert_eq!(newest(&MATRIX[2], names), None);
    }

    #[test]
    fn modules_load_after_their_dependencies_and_built_in_ones_are_skipped() {
        let dep = "kernel/drivers/virtio/virtio.ko:\n\
                   kernel/drivers/virtio/virtio_ring.ko:\n\
                   kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                   kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n";
        assert_eq!(
            load_order(dep, &["virtio_pci", "virtio_blk", "nvme"]),
            vec![
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio_pci_modern_dev.ko",
                "kernel/drivers/virtio/virtio_pci.ko",
                "kernel/drivers/block/virtio_blk.ko.xz",
            ]
        );
    }
}
