fn main() {
    let p = taskscope::probes::Probes::load(&taskscope::probes::LoadOptions {
        agent_tgid: std::process::id(),
        slow_syscall_ns: u64::MAX,
        max_tasks: 32768,
        ring_buffer_bytes: 1 << 20,
        force_raw_tp: std::env::args().any(|a| a == "--raw"),
    });
    match p {
        Ok(p) => {
            for h in &p.hooks {
                println!("{:?}", h);
            }
        }
        Err(e) => println!("ERR {e}"),
    }
}
