//! The host name, and the `host/pid` id a process signs its work with (error histories,
//! scheduler leases, audit lines, the CloudWatch instance dimension off EC2).

/// The machine's host name (kernel first, then `$HOSTNAME`), or `unknown-host`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".into())
}

/// This process's id: `hostname/pid`.
pub fn process_id() -> String {
    format!("{}/{}", hostname(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_id_is_host_slash_pid() {
        let id = process_id();
        let (host, pid) = id.rsplit_once('/').unwrap();
        assert_eq!(host, hostname());
        assert!(!host.is_empty());
        assert_eq!(pid, std::process::id().to_string());
    }
}
