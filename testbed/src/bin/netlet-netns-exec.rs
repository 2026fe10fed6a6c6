//! `netlet-netns-exec NETNS PROGRAM [ARGS...]`: runs PROGRAM inside the network namespace
//! pinned at NETNS (like `ip netns exec`, without remounting /sys). The testbed starts the host,
//! its drivers, the conformance suite and the CNI shim this way inside the namespace that stands
//! for the node.

#![forbid(unsafe_code)]

use std::ffi::CString;

use nix::sched::{CloneFlags, setns};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: netlet-netns-exec NETNS PROGRAM [ARGS...]");
        std::process::exit(2);
    }
    let ns = match std::fs::File::open(&args[0]) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("netlet-netns-exec: open {}: {e}", args[0]);
            std::process::exit(1);
        }
    };
    // Single-threaded here, so entering the namespace moves the whole process.
    if let Err(e) = setns(&ns, CloneFlags::CLONE_NEWNET) {
        eprintln!("netlet-netns-exec: setns {}: {e}", args[0]);
        std::process::exit(1);
    }
    let argv: Vec<CString> = match args[1..].iter().map(|a| CString::new(a.as_str())).collect() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("netlet-netns-exec: bad argument: {e}");
            std::process::exit(2);
        }
    };
    let e = nix::unistd::execvp(&argv[0], &argv).unwrap_err();
    eprintln!("netlet-netns-exec: exec {}: {e}", args[1]);
    std::process::exit(127);
}
