//! Workloads whose behaviour is known exactly, for the end-to-end tests.
//!
//! Every workload does its work, prints `ready` (and any ids the test needs) on stdout, then
//! blocks reading stdin, so that the test can compare the agent's numbers with the kernel's own
//! while nothing changes. Closing stdin lets it exit.

use std::{
    alloc::{alloc_zeroed, dealloc, Layout},
    ffi::CString,
    io::{Read, Write},
    time::{Duration, Instant},
};

fn ready(extra: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {extra}").expect("stdout");
    out.flush().expect("stdout");
}

fn block_until_stdin_closes() {
    let mut buf = [0u8; 64];
    while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid timespec pointer.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// Spins until this thread has used `ms` milliseconds of CPU.
fn burn(ms: u64) {
    let until = thread_cpu_ns() + ms * 1_000_000;
    let mut x = 0u64;
    while thread_cpu_ns() < until {
        for i in 0..10_000u64 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(i);
        }
        std::hint::black_box(x);
    }
}

fn arg(args: &[String], i: usize, what: &str) -> u64 {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("missing or bad argument {i}: {what}"))
}

/// The kernel's `struct iocb` (linux/aio_abi.h, little-endian).
#[repr(C)]
#[derive(Default)]
struct Iocb {
    data: u64,
    key: u32,
    rw_flags: i32,
    opcode: u16,
    reqprio: i16,
    fildes: u32,
    buf: u64,
    nbytes: u64,
    offset: i64,
    reserved2: u64,
    flags: u32,
    resfd: u32,
}

/// The kernel's `struct io_event`.
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct IoEvent {
    data: u64,
    obj: u64,
    res: i64,
    res2: i64,
}

/// See the `aio-reads` workload.
fn aio_reads(path: &str, batches: usize, depth: usize) {
    const FILE: usize = 16 << 20;
    const BLOCK: usize = 4096;
    const STRIDE: usize = 64 << 10;
    const IOCB_CMD_PREAD: u16 = 0;
    assert!(
        depth <= FILE / STRIDE,
        "at most {} reads a batch",
        FILE / STRIDE
    );
    std::fs::write(path, vec![7u8; FILE]).expect("write the file");
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync");
    let cpath = CString::new(path).expect("path");
    let layout = Layout::from_size_align(BLOCK * depth, 4096).expect("layout");
    // SAFETY: raw AIO syscalls on buffers we own, which outlive every request (each batch is
    // waited for in full); freed at the end.
    unsafe {
        let buf = alloc_zeroed(layout);
        assert!(!buf.is_null());
        let fd = libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_DIRECT);
        assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
        let mut ctx: libc::c_ulong = 0;
        let ret = libc::syscall(libc::SYS_io_setup, depth as libc::c_long, &mut ctx);
        assert_eq!(ret, 0, "io_setup: {}", std::io::Error::last_os_error());
        for batch in 0..batches {
            let iocbs: Vec<Iocb> = (0..depth)
                .map(|i| Iocb {
                    opcode: IOCB_CMD_PREAD,
                    fildes: fd as u32,
                    buf: buf.add(i * BLOCK) as u64,
                    nbytes: BLOCK as u64,
                    offset: (((batch * depth + i) * STRIDE) % FILE) as i64,
                    ..Iocb::default()
                })
                .collect();
            let mut pointers: Vec<*const Iocb> = iocbs.iter().map(|c| c as *const Iocb).collect();
            let submitted = libc::syscall(
                libc::SYS_io_submit,
                ctx,
                depth as libc::c_long,
                pointers.as_mut_ptr(),
            );
            assert_eq!(
                submitted,
                depth as libc::c_long,
                "io_submit: {}",
                std::io::Error::last_os_error()
            );
            let mut events = vec![IoEvent::default(); depth];
            let mut done = 0;
            while done < depth {
                let n = libc::syscall(
                    libc::SYS_io_getevents,
                    ctx,
                    1 as libc::c_long,
                    (depth - done) as libc::c_long,
                    events.as_mut_ptr().add(done),
                    std::ptr::null_mut::<libc::timespec>(),
                );
                assert!(n > 0, "io_getevents: {}", std::io::Error::last_os_error());
                done += n as usize;
            }
            for event in &events {
                assert_eq!(event.res, BLOCK as i64, "a read returned {}", event.res);
            }
        }
        libc::syscall(libc::SYS_io_destroy, ctx);
        libc::close(fd);
        dealloc(buf, layout);
    }
}

/// 30 syscalls that only read, and that nothing else calls in a forked child.
const KNOWN_SYSCALLS: [libc::c_long; 30] = [
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_gettid,
    libc::SYS_getpgrp,
    libc::SYS_getpgid,
    libc::SYS_getsid,
    libc::SYS_sched_yield,
    libc::SYS_getpriority,
    libc::SYS_getrlimit,
    libc::SYS_uname,
    libc::SYS_getcwd,
    libc::SYS_times,
    libc::SYS_sysinfo,
    libc::SYS_getrusage,
    libc::SYS_getcpu,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_time,
    libc::SYS_sched_getscheduler,
    libc::SYS_sched_getparam,
    libc::SYS_sched_getaffinity,
    libc::SYS_getgroups,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_capget,
    libc::SYS_getitimer,
];

/// Makes syscall `nr` of [`KNOWN_SYSCALLS`] with harmless arguments (`scratch` for whatever
/// it writes); panics if it fails.
fn known_syscall(nr: libc::c_long, scratch: &mut [u64; 512]) {
    let buf = scratch.as_mut_ptr();
    let (a, b, c): (libc::c_long, libc::c_long, libc::c_long) = match nr {
        libc::SYS_getpriority => (0, 0, 0),
        libc::SYS_getrlimit => (libc::RLIMIT_NOFILE as libc::c_long, buf as _, 0),
        libc::SYS_getcwd => (buf as _, 4096, 0),
        libc::SYS_getcpu => (buf as _, buf.wrapping_add(1) as _, 0),
        libc::SYS_clock_gettime => (libc::CLOCK_MONOTONIC as _, buf as _, 0),
        libc::SYS_sched_getparam => (0, buf as _, 0),
        libc::SYS_sched_getaffinity => (0, 1024, buf as _),
        libc::SYS_getresuid | libc::SYS_getresgid => {
            (buf as _, buf.wrapping_add(1) as _, buf.wrapping_add(2) as _)
        }
        libc::SYS_capget => {
            // _LINUX_CAPABILITY_VERSION_3, this process.
            scratch[0] = 0x2008_0522;
            (
                scratch.as_mut_ptr() as _,
                scratch.as_mut_ptr().wrapping_add(8) as _,
                0,
            )
        }
        libc::SYS_getitimer => (libc::ITIMER_REAL as _, buf as _, 0),
        libc::SYS_getrusage => (libc::RUSAGE_SELF as _, buf as _, 0),
        libc::SYS_getgroups
        | libc::SYS_getpgid
        | libc::SYS_getsid
        | libc::SYS_time
        | libc::SYS_sched_getscheduler => (0, 0, 0),
        _ => (buf as _, 0, 0),
    };
    // SAFETY: each call only reads state, or writes into `scratch` (4 KiB, enough for all).
    let ret = unsafe { libc::syscall(nr, a, b, c) };
    assert!(
        ret >= 0,
        "syscall {nr}: {}",
        std::io::Error::last_os_error()
    );
}

/// See the `many-processes` workload.
fn many_processes(n: usize, calls: u64) {
    let mut done = [0 as libc::c_int; 2];
    // SAFETY: plain libc calls; each child only makes raw syscalls, then exits with _exit.
    unsafe {
        assert_eq!(libc::pipe(done.as_mut_ptr()), 0);
        let mut pids = Vec::with_capacity(n);
        for _ in 0..n {
            let pid = libc::fork();
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                let mut scratch = [0u64; 512];
                for &nr in &KNOWN_SYSCALLS {
                    for _ in 0..calls {
                        known_syscall(nr, &mut scratch);
                    }
                }
                libc::write(done[1], b"x".as_ptr().cast(), 1);
                let mut byte = 0u8;
                while libc::read(0, (&raw mut byte).cast(), 1) > 0 {}
                libc::_exit(0);
            }
            pids.push(pid);
        }
        let mut byte = 0u8;
        for _ in 0..n {
            assert_eq!(libc::read(done[0], (&raw mut byte).cast(), 1), 1);
        }
        let pids: Vec<String> = pids.iter().map(|p| p.to_string()).collect();
        ready(&pids.join(","));
        block_until_stdin_closes();
        for _ in 0..n {
            libc::wait(std::ptr::null_mut());
        }
    }
}

/// See the `churn` workload.
fn churn(per_second: u64, seconds: u64) {
    let start = std::time::Instant::now();
    let total = per_second * seconds;
    let mut started = 0u64;
    while started < total {
        // Paced: the starts due by now, then a short sleep.
        let due = (start.elapsed().as_secs_f64() * per_second as f64) as u64;
        while started < due.min(total) {
            // SAFETY: the child only calls _exit.
            let pid = unsafe { libc::fork() };
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                unsafe { libc::_exit(0) };
            }
            started += 1;
            // Reap what has exited, so that the live count stays small.
            while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    while unsafe { libc::wait(std::ptr::null_mut()) } > 0 {}
    ready(&format!("{started} {:.3}", start.elapsed().as_secs_f64()));
}

/// clone3(CLONE_INTO_CGROUP) as a fork: 0 in the child, the child's pid in the parent.
fn clone_into_cgroup(dir: &str) -> libc::pid_t {
    let path = CString::new(dir).expect("path");
    // SAFETY: a valid C string; the descriptor is closed below.
    let cgroup = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(
        cgroup >= 0,
        "open {dir}: {}",
        std::io::Error::last_os_error()
    );
    // struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2 = 88 bytes).
    let mut clone_args = [0u64; 11];
    clone_args[0] = 0x2_0000_0000; // CLONE_INTO_CGROUP (linux/sched.h)
    clone_args[4] = libc::SIGCHLD as u64; // exit_signal
    clone_args[10] = cgroup as u64;
    // SAFETY: a single-threaded process; without CLONE_VM the child runs on a copy of this
    // stack, as after fork().
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            clone_args.as_mut_ptr(),
            std::mem::size_of_val(&clone_args),
        )
    };
    assert!(pid >= 0, "clone3: {}", std::io::Error::last_os_error());
    if pid != 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(cgroup) };
    }
    pid as libc::pid_t
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        // cpu-burn MS: MS milliseconds of CPU time.
        Some("cpu-burn") => {
            burn(arg(&args, 2, "milliseconds"));
            ready("");
        }
        // syscalls N M: exactly N getpgid calls, the last M of which fail with ESRCH.
        Some("syscalls") => {
            let n = arg(&args, 2, "calls");
            let m = arg(&args, 3, "failures");
            let mut failures = 0;
            for i in 0..n {
                // pid_max is at most 2^22, so this pid never exists.
                let pid: libc::c_long = if i >= n - m { 1 << 30 } else { 0 };
                // SAFETY: getpgid takes a pid and touches no memory.
                let ret = unsafe { libc::syscall(libc::SYS_getpgid, pid) };
                if ret < 0 {
                    assert_eq!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::ESRCH)
                    );
                    failures += 1;
                }
            }
            assert_eq!(failures, m);
            ready("");
        }
        // no-syscalls FROM TO ROUNDS: ROUNDS times, every syscall number from FROM to TO - 1;
        // each must fail with ENOSYS (numbers no kernel gives a syscall). Prints the calls made.
        Some("no-syscalls") => {
            let (from, to) = (arg(&args, 2, "from"), arg(&args, 3, "to"));
            let mut calls = 0u64;
            for _ in 0..arg(&args, 4, "rounds") {
                for nr in from..to {
                    // SAFETY: an unassigned syscall number does nothing but return ENOSYS.
                    let ret = unsafe { libc::syscall(nr as libc::c_long) };
                    let errno = std::io::Error::last_os_error().raw_os_error();
                    assert!(
                        ret == -1 && errno == Some(libc::ENOSYS),
                        "syscall {nr}: {errno:?}"
                    );
                    calls += 1;
                }
            }
            ready(&calls.to_string());
        }
        // direct-write PATH BYTES: BYTES written with O_DIRECT in 1 MiB blocks, then fsync.
        Some("direct-write") => {
            let path = CString::new(args.get(2).expect("path").as_str()).expect("path");
            let total = arg(&args, 3, "bytes") as usize;
            const BLOCK: usize = 1 << 20;
            assert_eq!(total % BLOCK, 0, "bytes must be a multiple of 1 MiB");
            let layout = Layout::from_size_align(BLOCK, 4096).expect("layout");
            // SAFETY: non-zero size; freed below.
            let buf = unsafe { alloc_zeroed(layout) };
            assert!(!buf.is_null());
            // SAFETY: plain libc calls on a buffer we own.
            unsafe {
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_DIRECT,
                    0o600,
                );
                assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
                let mut written = 0;
                while written < total {
                    let n = libc::write(fd, buf.cast(), BLOCK);
                    assert_eq!(
                        n,
                        BLOCK as isize,
                        "write: {}",
                        std::io::Error::last_os_error()
                    );
                    written += BLOCK;
                }
                assert_eq!(libc::fsync(fd), 0);
                libc::close(fd);
                dealloc(buf, layout);
            }
            ready("");
        }
        // aio-reads PATH BATCHES DEPTH: writes a 16 MiB file, then reads it with Linux AIO and
        // O_DIRECT in BATCHES submissions of DEPTH 4 KiB reads, 64 KiB apart (never adjacent,
        // so the block layer cannot merge them). One io_submit plugs its requests: many start
        // before the first can be dispatched, whatever the device's speed.
        Some("aio-reads") => {
            let path = args.get(2).expect("path");
            let (batches, depth) = (arg(&args, 3, "batches"), arg(&args, 4, "depth"));
            aio_reads(path, batches as usize, depth as usize);
            ready(&(batches * depth).to_string());
        }
        // many-processes N CALLS: forks N children; each makes each syscall of
        // `KNOWN_SYSCALLS` CALLS times, then waits for stdin to close. Prints the children's
        // pids once all of them have made their calls.
        Some("many-processes") => {
            let (n, calls) = (arg(&args, 2, "processes"), arg(&args, 3, "calls"));
            many_processes(n as usize, calls);
            return;
        }
        // churn RATE SECONDS: RATE process starts a second (fork, then _exit) for SECONDS;
        // prints the processes started and the seconds it took.
        Some("churn") => {
            churn(arg(&args, 2, "per second"), arg(&args, 3, "seconds"));
            return;
        }
        // threads N MS: N threads that each burn MS ms of CPU; prints their tids.
        Some("threads") => {
            let n = arg(&args, 2, "threads");
            let ms = arg(&args, 3, "milliseconds");
            let (tx, rx) = std::sync::mpsc::channel();
            let handles: Vec<_> = (0..n)
                .map(|_| {
                    let tx = tx.clone();
                    std::thread::spawn(move || {
                        // SAFETY: gettid has no preconditions.
                        tx.send(unsafe { libc::gettid() }).expect("send");
                        burn(ms);
                    })
                })
                .collect();
            for handle in handles {
                handle.join().expect("thread");
            }
            let tids: Vec<String> = rx.try_iter().map(|t| t.to_string()).collect();
            // CPU time of the whole process, exited threads included: the kernel's own total.
            ready(&format!(
                "{} {}",
                tids.join(","),
                clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
            ));
        }
        // sleep MS: one nanosleep of MS milliseconds.
        Some("sleep") => {
            std::thread::sleep(Duration::from_millis(arg(&args, 2, "milliseconds")));
            ready("");
        }
        // sleeps US TIMES: TIMES sleeps (clock_nanosleep) of US microseconds; prints the median
        // length of a sleep as measured here, in nanoseconds.
        Some("sleeps") => {
            let length = Duration::from_micros(arg(&args, 2, "microseconds"));
            let mut took: Vec<u64> = (0..arg(&args, 3, "times"))
                .map(|_| {
                    let start = clock_ns(libc::CLOCK_MONOTONIC);
                    std::thread::sleep(length);
                    clock_ns(libc::CLOCK_MONOTONIC) - start
                })
                .collect();
            took.sort_unstable();
            ready(&took[took.len() / 2].to_string());
        }
        // duty CPU RUN_US SLEEP_US MS: on CPU number CPU, spins RUN_US then sleeps SLEEP_US,
        // for MS milliseconds (no stdin wait): idle gaps of a known length on that CPU.
        Some("duty") => {
            let cpu = arg(&args, 2, "cpu") as usize;
            let run = Duration::from_micros(arg(&args, 3, "run microseconds"));
            let sleep = Duration::from_micros(arg(&args, 4, "sleep microseconds"));
            let until = Instant::now() + Duration::from_millis(arg(&args, 5, "milliseconds"));
            // SAFETY: a zeroed cpu_set_t is valid; the calls only read and write it.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                assert_eq!(
                    libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
                    0
                );
            }
            while Instant::now() < until {
                let spin_until = Instant::now() + run;
                while Instant::now() < spin_until {
                    std::hint::black_box(0u64);
                }
                std::thread::sleep(sleep);
            }
            return;
        }
        // hold-memory MIB: allocates MIB mebibytes and writes every page, so exactly that much
        // anonymous memory is charged to its cgroup, then waits.
        Some("hold-memory") => {
            let bytes = arg(&args, 2, "mebibytes") as usize * 1024 * 1024;
            let mut held = vec![0u8; bytes];
            for page in held.chunks_mut(4096) {
                page[0] = 1;
            }
            std::hint::black_box(&held);
            ready("");
            block_until_stdin_closes();
            drop(held);
            return;
        }
        // sleep-report MS FILE / spin-report MS FILE: sleeps (or burns CPU) for MS ms, then
        // writes its own /proc/self/schedstat ("on-CPU ns, run-queue ns, slices") to FILE and
        // exits (no stdin wait): the kernel's figures for a process that is gone when compared.
        Some(kind @ ("sleep-report" | "spin-report")) => {
            let ms = arg(&args, 2, "milliseconds");
            if kind == "sleep-report" {
                std::thread::sleep(Duration::from_millis(ms));
            } else {
                let until = Instant::now() + Duration::from_millis(ms);
                while Instant::now() < until {
                    std::hint::black_box(0u64);
                }
            }
            let schedstat = std::fs::read_to_string("/proc/self/schedstat").expect("schedstat");
            std::fs::write(args.get(3).expect("file"), schedstat).expect("write report");
            return;
        }
        // move-burn DIR MS: burns 200 ms where it starts, writes its own pid to
        // DIR/cgroup.procs (no exec), then burns MS ms of CPU in that cgroup.
        Some("move-burn") => {
            let dir = args.get(2).expect("cgroup directory");
            burn(200);
            std::fs::write(
                format!("{dir}/cgroup.procs"),
                std::process::id().to_string(),
            )
            .expect("move into the cgroup");
            burn(arg(&args, 3, "milliseconds"));
            ready("");
        }
        // thread-move DOMAIN THREADED MS: moves itself into the cgroup DOMAIN, burns 200 ms
        // there, and a thread of its own moves itself (cgroup.threads) into THREADED (a
        // threaded child of DOMAIN) and burns MS ms there.
        Some("thread-move") => {
            let domain = args.get(2).expect("domain cgroup").clone();
            let threaded = args.get(3).expect("threaded cgroup").clone();
            let ms = arg(&args, 4, "milliseconds");
            std::fs::write(
                format!("{domain}/cgroup.procs"),
                std::process::id().to_string(),
            )
            .expect("move into the domain cgroup");
            burn(200);
            std::thread::spawn(move || {
                // SAFETY: gettid has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                std::fs::write(format!("{threaded}/cgroup.threads"), tid.to_string())
                    .expect("move the thread into the threaded cgroup");
                burn(ms);
            })
            .join()
            .expect("the burning thread");
            ready("");
        }
        // clone-into-burn DIR MS: a child made by clone3(CLONE_INTO_CGROUP) into DIR burns MS
        // ms of CPU and exits; prints the child's pid once it is reaped.
        Some("clone-into-burn") => {
            let child = clone_into_cgroup(args.get(2).expect("cgroup directory"));
            if child == 0 {
                burn(arg(&args, 3, "milliseconds"));
                // SAFETY: the child of a fork-like clone leaves without running its parent's
                // destructors.
                unsafe { libc::_exit(0) };
            }
            let mut status = 0;
            // SAFETY: waiting for our own child.
            unsafe { libc::waitpid(child, &mut status, 0) };
            ready(&child.to_string());
        }
        // exit CODE: exits at once with CODE (no stdin wait).
        Some("exit") => std::process::exit(arg(&args, 2, "code") as i32),
        // spin-for MS: burns wall time (no stdin wait), for load generation.
        Some("spin-for") => {
            let until = Instant::now() + Duration::from_millis(arg(&args, 2, "milliseconds"));
            while Instant::now() < until {
                std::hint::black_box(0u64);
            }
            return;
        }
        other => panic!("unknown workload {other:?}"),
    }
    block_until_stdin_closes();
}
