//! What the task model reads from the host, through one narrow interface: /proc for processes
//! it did not see start (and the few fields the kernel events do not carry), cgroupfs for
//! workload paths, and the clocks. The model is otherwise pure logic: tests give it a host of
//! their own, and [`SystemHost`] is the real one.

use crate::{
    clock::Clocks,
    procfs::{self, CgroupResolver, Stat},
};

/// The host as the task model sees it.
pub(crate) trait Host: Send {
    /// The clocks, now.
    fn clocks(&self) -> Clocks;
    /// Every pid in /proc.
    fn pids(&self) -> Vec<u32>;
    /// `/proc/<pid>/stat`, when the process still exists.
    fn stat(&self, pid: u32) -> Option<Stat>;
    /// The executable's path (`/proc/<pid>/exe`).
    fn exe(&self, pid: u32) -> Option<String>;
    /// The argument vector (`/proc/<pid>/cmdline`), before redaction, cut at
    /// [`taskscope_common::ARGS_LEN`] bytes, and whether it was cut; `None`: unreadable.
    fn cmdline(&self, pid: u32) -> Option<(Vec<String>, bool)>;
    /// The real uid (`/proc/<pid>/status`).
    fn uid(&self, pid: u32) -> Option<u32>;
    /// The cgroup v2 path (`/proc/<pid>/cgroup`).
    fn cgroup(&self, pid: u32) -> Option<String>;
    /// The `TRACEPARENT` of the process's environment: (trace id, parent span id).
    fn traceparent(&self, pid: u32) -> Option<(u128, u64)>;
    /// The cgroup id (inode) of a cgroup v2 path.
    fn cgroup_id(&mut self, path: &str) -> Option<u64>;
    /// The path of cgroup `id`, with process `pid` (in it) to ask when the id is new.
    fn cgroup_path(&mut self, id: u64, pid: u32) -> Option<String>;
}

/// The real host: procfs, cgroupfs and the clocks.
pub(crate) struct SystemHost {
    cgroups: CgroupResolver,
}

impl SystemHost {
    /// The host, resolving cgroup paths with `cgroups`.
    pub(crate) fn new(cgroups: CgroupResolver) -> Self {
        Self { cgroups }
    }
}

impl Host for SystemHost {
    fn clocks(&self) -> Clocks {
        Clocks::now()
    }

    fn pids(&self) -> Vec<u32> {
        procfs::list_pids()
    }

    fn stat(&self, pid: u32) -> Option<Stat> {
        procfs::read_stat(pid)
    }

    fn exe(&self, pid: u32) -> Option<String> {
        procfs::read_exe(pid)
    }

    fn cmdline(&self, pid: u32) -> Option<(Vec<String>, bool)> {
        procfs::read_cmdline(pid)
    }

    fn uid(&self, pid: u32) -> Option<u32> {
        procfs::read_uid(pid)
    }

    fn cgroup(&self, pid: u32) -> Option<String> {
        procfs::read_cgroup_v2(pid)
    }

    fn traceparent(&self, pid: u32) -> Option<(u128, u64)> {
        procfs::read_traceparent(pid)
    }

    fn cgroup_id(&mut self, path: &str) -> Option<u64> {
        self.cgroups.id_of(path)
    }

    fn cgroup_path(&mut self, id: u64, pid: u32) -> Option<String> {
        self.cgroups.path_of_process(id, pid)
    }
}
