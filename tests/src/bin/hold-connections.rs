//! Test helper: opens many connections to a tokend socket and holds them
//! until its stdin closes, as a user hogging the daemon would.
//!
//! `hold-connections SOCKET COUNT`: connection 0, 2, 4, … completes the
//! hello and then idles; 1, 3, 5, … connects and stays silent. Once all are
//! open it prints one line, `greeted-accepted=A greeted-refused=R
//! greeted-closed=C silent=S message=M` (M: the first refusal's text), and
//! waits. Its stdin is the test's pipe, so it exits when the test ends,
//! even on a panic.
//!
//! Unix only, like the tests that use it; elsewhere it only says so.

#[cfg(unix)]
use std::io::{BufRead, Write};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
#[cfg(unix)]
use std::time::Duration;
#[cfg(unix)]
use tokend_proto::{Hello, HelloReply, read_frame, write_frame};

#[cfg(unix)]
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, count] = args.as_slice() else {
        die("usage: hold-connections SOCKET COUNT");
    };
    let count: usize = count.parse().unwrap_or_else(|_| die("COUNT: a number"));
    raise_fd_limit(count as u64 + 64);
    let mut held = Vec::with_capacity(count);
    let (mut accepted, mut refused, mut closed, mut silent) = (0, 0, 0, 0);
    let mut message = String::new();
    for i in 0..count {
        let mut stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| die(&format!("connection {i} to {socket}: {e}")));
        if i % 2 == 1 {
            silent += 1;
        } else {
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("read timeout");
            let reply = write_frame(&mut stream, &Hello::current())
                .ok()
                .and_then(|()| read_frame::<HelloReply>(&mut stream).ok());
            match reply {
                Some(r) if r.accepted => accepted += 1,
                Some(r) => {
                    refused += 1;
                    if message.is_empty() {
                        message = r.message;
                    }
                }
                None => closed += 1,
            }
        }
        held.push(stream);
    }
    println!(
        "greeted-accepted={accepted} greeted-refused={refused} greeted-closed={closed} silent={silent} message={message}"
    );
    std::io::stdout().flush().expect("stdout");
    // Hold everything until the test closes our stdin (or dies).
    let mut line = String::new();
    while std::io::stdin()
        .lock()
        .read_line(&mut line)
        .is_ok_and(|n| n > 0)
    {}
    drop(held);
}

#[cfg(unix)]
/// Lifts the soft open-file limit to `need` (within the hard limit, which
/// an unprivileged process may not raise).
fn raise_fd_limit(need: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            die("getrlimit failed");
        }
        if limit.rlim_cur >= need {
            return;
        }
        if limit.rlim_max < need {
            die(&format!(
                "the hard open-file limit is {}, below the {need} needed",
                limit.rlim_max
            ));
        }
        limit.rlim_cur = need;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            die("setrlimit failed");
        }
    }
}

#[cfg(unix)]
fn die(message: &str) -> ! {
    eprintln!("hold-connections: {message}");
    std::process::exit(2);
}

#[cfg(not(unix))]
fn main() {
    eprintln!("hold-connections: Unix only");
    std::process::exit(2);
}
