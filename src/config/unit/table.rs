//! What doorman does with every unit directive it knows: one table, the
//! one doorman.conf(5) prints under SYSTEMD UNITS, Directives (a test
//! keeps the two in step).
//!
//! The rule: a directive is applied where doorman can do what systemd
//! does; accepted with a warning naming file:line where it means nothing
//! without a service manager (or changes nothing a client sees); quiet
//! where it only orders or documents units; and an error, with a hint,
//! only where ignoring it would silently change who runs the program or
//! what it may touch.

/// What doorman does with a directive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Applied,
    /// Accepted and not applied, with this warning.
    Warn(&'static str),
    /// Accepted silently: dependencies, ordering, documentation.
    Quiet,
    /// Refused, with this hint.
    Error(&'static str),
}

use Use::*;

const ORDER: Use = Quiet;
const NO_MANAGER: &str = "not applied: it asks a service manager for something doorman does not do";
const NO_CGROUPS: &str =
    "not applied: doorman runs handlers in no cgroup of their own (use Limit*= for resource limits)";
const NOT_LOGGED: &str =
    "not applied: a handler's output goes to doorman's log or where StandardOutput= says";

/// (section, directive, use). `Condition*=`/`Assert*=` are handled apart
/// (see `condition.rs`).
pub const TABLE: &[(&str, &str, Use)] = &[
    // [Unit]
    ("Unit", "Description", Applied),
    ("Unit", "Documentation", Quiet),
    ("Unit", "Requires", ORDER),
    ("Unit", "Requisite", ORDER),
    ("Unit", "Wants", ORDER),
    ("Unit", "BindsTo", ORDER),
    ("Unit", "PartOf", ORDER),
    ("Unit", "Upholds", ORDER),
    ("Unit", "Conflicts", ORDER),
    ("Unit", "Before", ORDER),
    ("Unit", "After", ORDER),
    ("Unit", "OnFailure", ORDER),
    ("Unit", "OnSuccess", ORDER),
    ("Unit", "PropagatesReloadTo", ORDER),
    ("Unit", "ReloadPropagatedFrom", ORDER),
    ("Unit", "PropagatesStopTo", ORDER),
    ("Unit", "StopPropagatedFrom", ORDER),
    ("Unit", "DefaultDependencies", ORDER),
    ("Unit", "RequiresMountsFor", ORDER),
    ("Unit", "WantsMountsFor", ORDER),
    ("Unit", "StopWhenUnneeded", ORDER),
    ("Unit", "RefuseManualStart", ORDER),
    ("Unit", "RefuseManualStop", ORDER),
    ("Unit", "AllowIsolate", ORDER),
    ("Unit", "IgnoreOnIsolate", ORDER),
    ("Unit", "CollectMode", ORDER),
    ("Unit", "OnFailureJobMode", ORDER),
    ("Unit", "JobTimeoutSec", ORDER),
    ("Unit", "JobRunningTimeoutSec", ORDER),
    ("Unit", "JobTimeoutAction", ORDER),
    ("Unit", "SourcePath", ORDER),
    ("Unit", "JoinsNamespaceOf", Warn("not applied: handlers run in doorman's namespaces unless their own sandboxing says otherwise")),
    ("Unit", "StartLimitIntervalSec", Warn("not applied: doorman's crash-loop guard (crash=) limits failing starts instead")),
    ("Unit", "StartLimitBurst", Warn("not applied: doorman's crash-loop guard (crash=) limits failing starts instead")),
    ("Unit", "StartLimitAction", Warn(NO_MANAGER)),
    ("Unit", "FailureAction", Warn(NO_MANAGER)),
    ("Unit", "SuccessAction", Warn(NO_MANAGER)),
    ("Unit", "RebootArgument", Warn(NO_MANAGER)),
    // [Socket]
    ("Socket", "ListenStream", Applied),
    ("Socket", "ListenDatagram", Applied),
    ("Socket", "ListenSequentialPacket", Applied),
    ("Socket", "Accept", Applied),
    ("Socket", "Service", Applied),
    ("Socket", "MaxConnections", Applied),
    ("Socket", "MaxConnectionsPerSource", Applied),
    ("Socket", "Backlog", Applied),
    ("Socket", "BindIPv6Only", Applied),
    ("Socket", "ReusePort", Applied),
    ("Socket", "FreeBind", Applied),
    ("Socket", "KeepAlive", Applied),
    ("Socket", "NoDelay", Applied),
    ("Socket", "ReceiveBuffer", Applied),
    ("Socket", "SendBuffer", Applied),
    ("Socket", "SocketUser", Applied),
    ("Socket", "SocketGroup", Applied),
    ("Socket", "SocketMode", Applied),
    ("Socket", "DirectoryMode", Applied),
    ("Socket", "RemoveOnStop", Applied),
    ("Socket", "FileDescriptorName", Applied),
    ("Socket", "TriggerLimitIntervalSec", Applied),
    ("Socket", "TriggerLimitBurst", Applied),
    ("Socket", "PollLimitIntervalSec", Applied),
    ("Socket", "PollLimitBurst", Applied),
    ("Socket", "IPAddressAllow", Applied),
    ("Socket", "IPAddressDeny", Applied),
    ("Socket", "X-Doorman-Options", Applied),
    ("Socket", "Timestamping", Warn("not applied: packets carry no time stamps")),
    ("Socket", "PassCredentials", Warn("not applied: SO_PASSCRED is not set on the socket")),
    ("Socket", "PassSecurity", Warn("not applied: SO_PASSSEC is not set on the socket")),
    ("Socket", "PassPacketInfo", Warn("not applied: no packet information is passed")),
    ("Socket", "PassFileDescriptorsToExec", Warn("not applied: a socket unit's own commands are not run")),
    ("Socket", "Priority", Warn("not applied: the socket's priority is the kernel's default")),
    ("Socket", "Mark", Warn("not applied: packets are not marked")),
    ("Socket", "IPTOS", Warn("not applied: the IP type of service is the kernel's default")),
    ("Socket", "IPTTL", Warn("not applied: the IP time to live is the kernel's default")),
    ("Socket", "DeferAcceptSec", Warn("not applied: connections are accepted at once")),
    ("Socket", "KeepAliveTimeSec", Warn("not applied: keep-alive probes use the kernel's timings")),
    ("Socket", "KeepAliveIntervalSec", Warn("not applied: keep-alive probes use the kernel's timings")),
    ("Socket", "KeepAliveProbes", Warn("not applied: keep-alive probes use the kernel's timings")),
    ("Socket", "TCPCongestion", Warn("not applied: the kernel's congestion control is used")),
    ("Socket", "PipeSize", Warn("not applied: FIFOs are not served")),
    ("Socket", "FlushPending", Warn("not applied: queued data is left for the handler")),
    ("Socket", "Symlinks", Warn("not applied: no symlinks are made to the socket file; clients using them will not reach it")),
    ("Socket", "TimeoutSec", Warn("not applied: a socket unit's own commands are not run")),
    ("Socket", "ExecStartPre", Warn("not run: a socket unit's own commands are not run (run it before doorman starts)")),
    ("Socket", "ExecStartPost", Warn("not run: a socket unit's own commands are not run")),
    ("Socket", "ExecStopPre", Warn("not run: a socket unit's own commands are not run")),
    ("Socket", "ExecStopPost", Warn("not run: a socket unit's own commands are not run")),
    ("Socket", "ListenFIFO", Error("doorman serves sockets only")),
    ("Socket", "ListenSpecial", Error("doorman serves sockets only")),
    ("Socket", "ListenNetlink", Error("doorman serves inet and unix sockets only")),
    ("Socket", "ListenMessageQueue", Error("doorman serves sockets only")),
    ("Socket", "ListenUSBFunction", Error("doorman serves sockets only")),
    ("Socket", "SocketProtocol", Error("doorman makes TCP, UDP and unix sockets only")),
    ("Socket", "BindToDevice", Error("the socket would listen on every interface: bind it to that interface's address instead")),
    ("Socket", "Transparent", Error("doorman does not make transparent (IP_TRANSPARENT) sockets")),
    ("Socket", "Broadcast", Error("doorman does not make broadcast sockets")),
    ("Socket", "Writable", Error("doorman serves sockets only")),
    ("Socket", "MessageQueueMaxMessages", Error("doorman serves sockets only")),
    ("Socket", "MessageQueueMessageSize", Error("doorman serves sockets only")),
    ("Socket", "SELinuxContextFromNet", Error("doorman does not switch SELinux contexts")),
    ("Socket", "SmackLabel", Error("doorman does not set Smack labels")),
    ("Socket", "SmackLabelIPIn", Error("doorman does not set Smack labels")),
    ("Socket", "SmackLabelIPOut", Error("doorman does not set Smack labels")),
    // [Service]: the command and its process
    ("Service", "ExecStart", Applied),
    ("Service", "ExecStartPre", Applied),
    ("Service", "ExecStartPost", Applied),
    ("Service", "Type", Applied),
    ("Service", "NotifyAccess", Applied),
    ("Service", "User", Applied),
    ("Service", "Group", Applied),
    ("Service", "SupplementaryGroups", Applied),
    ("Service", "DynamicUser", Applied),
    ("Service", "Environment", Applied),
    ("Service", "EnvironmentFile", Applied),
    ("Service", "PassEnvironment", Applied),
    ("Service", "UnsetEnvironment", Applied),
    ("Service", "WorkingDirectory", Applied),
    ("Service", "UMask", Applied),
    ("Service", "Nice", Applied),
    ("Service", "OOMScoreAdjust", Applied),
    ("Service", "IgnoreSIGPIPE", Applied),
    ("Service", "NonBlocking", Applied),
    ("Service", "StandardInput", Applied),
    ("Service", "StandardOutput", Applied),
    ("Service", "StandardError", Applied),
    ("Service", "KillMode", Applied),
    ("Service", "KillSignal", Applied),
    ("Service", "TimeoutStopSec", Applied),
    ("Service", "RuntimeMaxSec", Applied),
    ("Service", "SuccessExitStatus", Applied),
    ("Service", "RuntimeDirectory", Applied),
    ("Service", "RuntimeDirectoryMode", Applied),
    ("Service", "RuntimeDirectoryPreserve", Applied),
    ("Service", "StateDirectory", Applied),
    ("Service", "StateDirectoryMode", Applied),
    ("Service", "CacheDirectory", Applied),
    ("Service", "CacheDirectoryMode", Applied),
    ("Service", "LogsDirectory", Applied),
    ("Service", "LogsDirectoryMode", Applied),
    ("Service", "ConfigurationDirectory", Applied),
    ("Service", "ConfigurationDirectoryMode", Applied),
    ("Service", "X-Doorman-Options", Applied),
    ("Service", "LimitCPU", Applied),
    ("Service", "LimitFSIZE", Applied),
    ("Service", "LimitDATA", Applied),
    ("Service", "LimitSTACK", Applied),
    ("Service", "LimitCORE", Applied),
    ("Service", "LimitRSS", Applied),
    ("Service", "LimitNOFILE", Applied),
    ("Service", "LimitAS", Applied),
    ("Service", "LimitNPROC", Applied),
    ("Service", "LimitMEMLOCK", Applied),
    ("Service", "LimitLOCKS", Applied),
    ("Service", "LimitSIGPENDING", Applied),
    ("Service", "LimitMSGQUEUE", Applied),
    ("Service", "LimitNICE", Applied),
    ("Service", "LimitRTPRIO", Applied),
    ("Service", "LimitRTTIME", Applied),
    // [Service]: sandboxing
    ("Service", "NoNewPrivileges", Applied),
    ("Service", "ProtectSystem", Applied),
    ("Service", "ProtectHome", Applied),
    ("Service", "PrivateTmp", Applied),
    ("Service", "PrivateDevices", Applied),
    ("Service", "PrivateNetwork", Applied),
    ("Service", "PrivateUsers", Applied),
    ("Service", "PrivateIPC", Applied),
    ("Service", "PrivateMounts", Applied),
    ("Service", "ProtectKernelTunables", Applied),
    ("Service", "ProtectKernelModules", Applied),
    ("Service", "ProtectKernelLogs", Applied),
    ("Service", "ProtectControlGroups", Applied),
    ("Service", "ProtectClock", Applied),
    ("Service", "ProtectHostname", Applied),
    ("Service", "ProtectProc", Applied),
    ("Service", "ProcSubset", Applied),
    ("Service", "ReadWritePaths", Applied),
    ("Service", "ReadOnlyPaths", Applied),
    ("Service", "InaccessiblePaths", Applied),
    ("Service", "BindPaths", Applied),
    ("Service", "BindReadOnlyPaths", Applied),
    ("Service", "TemporaryFileSystem", Applied),
    ("Service", "CapabilityBoundingSet", Applied),
    ("Service", "AmbientCapabilities", Applied),
    ("Service", "RestrictNamespaces", Applied),
    ("Service", "RestrictAddressFamilies", Applied),
    ("Service", "RestrictRealtime", Applied),
    ("Service", "RestrictSUIDSGID", Applied),
    ("Service", "LockPersonality", Applied),
    ("Service", "MemoryDenyWriteExecute", Applied),
    ("Service", "SystemCallArchitectures", Applied),
    ("Service", "SystemCallFilter", Applied),
    ("Service", "SystemCallErrorNumber", Applied),
    // [Service]: a service manager's business
    ("Service", "ExecReload", Warn("not run: a reload of doorman (SIGHUP) reloads its configuration, not running handlers")),
    ("Service", "ExecStop", Warn("not run: doorman stops a handler with its KillSignal=")),
    ("Service", "ExecStopPost", Warn("not run: nothing runs after a handler has exited")),
    ("Service", "ExecCondition", Warn("not run: the unit's Condition*= are evaluated instead")),
    ("Service", "Restart", Warn("not applied: doorman starts a handler again when the next client comes")),
    ("Service", "RestartSec", Warn("not applied: doorman starts a handler again when the next client comes")),
    ("Service", "RestartPreventExitStatus", Warn("not applied: doorman starts a handler again when the next client comes")),
    ("Service", "RestartForceExitStatus", Warn("not applied: doorman starts a handler again when the next client comes")),
    ("Service", "RestartMode", Warn("not applied: doorman starts a handler again when the next client comes")),
    ("Service", "RemainAfterExit", Warn(NO_MANAGER)),
    ("Service", "GuessMainPID", Warn(NO_MANAGER)),
    ("Service", "PIDFile", Warn("not applied: doorman follows the handler's process group instead")),
    ("Service", "BusName", Warn("not applied: doorman does not watch D-Bus names")),
    ("Service", "TimeoutStartSec", Warn("not applied: doorman does not wait for a handler to start")),
    ("Service", "TimeoutSec", Warn("not applied: doorman does not wait for a handler to start; see TimeoutStopSec=")),
    ("Service", "TimeoutAbortSec", Warn(NO_MANAGER)),
    ("Service", "WatchdogSec", Warn("not applied: doorman keeps no watchdog")),
    ("Service", "WatchdogSignal", Warn("not applied: doorman keeps no watchdog")),
    ("Service", "FileDescriptorStoreMax", Warn("not applied: doorman keeps no file descriptor store")),
    ("Service", "OOMPolicy", Warn(NO_MANAGER)),
    ("Service", "ExitType", Warn(NO_MANAGER)),
    ("Service", "SendSIGHUP", Warn(NO_MANAGER)),
    ("Service", "SendSIGKILL", Warn(NO_MANAGER)),
    ("Service", "FinalKillSignal", Warn(NO_MANAGER)),
    ("Service", "RestartKillSignal", Warn(NO_MANAGER)),
    ("Service", "RemoveIPC", Warn("not applied: the handler's System V IPC objects are left when it exits")),
    ("Service", "KeyringMode", Warn("not applied: the handler shares doorman's session keyring")),
    ("Service", "SyslogIdentifier", Warn(NOT_LOGGED)),
    ("Service", "SyslogFacility", Warn(NOT_LOGGED)),
    ("Service", "SyslogLevel", Warn(NOT_LOGGED)),
    ("Service", "SyslogLevelPrefix", Warn(NOT_LOGGED)),
    ("Service", "LogLevelMax", Warn(NOT_LOGGED)),
    ("Service", "LogExtraFields", Warn(NOT_LOGGED)),
    ("Service", "LogRateLimitIntervalSec", Warn(NOT_LOGGED)),
    ("Service", "LogRateLimitBurst", Warn(NOT_LOGGED)),
    ("Service", "LogNamespace", Warn(NOT_LOGGED)),
    ("Service", "UtmpIdentifier", Warn(NO_MANAGER)),
    ("Service", "UtmpMode", Warn(NO_MANAGER)),
    ("Service", "Slice", Warn(NO_CGROUPS)),
    ("Service", "Delegate", Warn(NO_CGROUPS)),
    ("Service", "CPUAccounting", Warn(NO_CGROUPS)),
    ("Service", "CPUWeight", Warn(NO_CGROUPS)),
    ("Service", "CPUQuota", Warn(NO_CGROUPS)),
    ("Service", "MemoryAccounting", Warn(NO_CGROUPS)),
    ("Service", "MemoryMin", Warn(NO_CGROUPS)),
    ("Service", "MemoryLow", Warn(NO_CGROUPS)),
    ("Service", "MemoryHigh", Warn(NO_CGROUPS)),
    ("Service", "MemoryMax", Warn(NO_CGROUPS)),
    ("Service", "MemorySwapMax", Warn(NO_CGROUPS)),
    ("Service", "TasksAccounting", Warn(NO_CGROUPS)),
    ("Service", "TasksMax", Warn(NO_CGROUPS)),
    ("Service", "IOAccounting", Warn(NO_CGROUPS)),
    ("Service", "IOWeight", Warn(NO_CGROUPS)),
    ("Service", "IPAccounting", Warn(NO_CGROUPS)),
    ("Service", "CPUSchedulingPolicy", Warn("not applied: the handler keeps doorman's scheduling policy (Nice= is applied)")),
    ("Service", "CPUSchedulingPriority", Warn("not applied: the handler keeps doorman's scheduling policy (Nice= is applied)")),
    ("Service", "CPUSchedulingResetOnFork", Warn("not applied: the handler keeps doorman's scheduling policy")),
    ("Service", "CPUAffinity", Warn("not applied: the handler may run on every CPU")),
    ("Service", "IOSchedulingClass", Warn("not applied: the handler keeps doorman's I/O priority")),
    ("Service", "IOSchedulingPriority", Warn("not applied: the handler keeps doorman's I/O priority")),
    ("Service", "LoadCredential", Warn("not applied: no credentials directory is made ($CREDENTIALS_DIRECTORY is not set)")),
    ("Service", "SetCredential", Warn("not applied: no credentials directory is made ($CREDENTIALS_DIRECTORY is not set)")),
    ("Service", "SystemCallLog", Warn("not applied: system calls are not logged")),
    // [Service]: ignoring these would change who runs it or what it may touch
    ("Service", "RootDirectory", Error("doorman does not change a handler's root directory: chroot in the program, or drop the line if the sandbox is not needed")),
    ("Service", "RootImage", Error("doorman does not mount disk images")),
    ("Service", "MountImages", Error("doorman does not mount disk images")),
    ("Service", "ExtensionImages", Error("doorman does not mount disk images")),
    ("Service", "PAMName", Error("doorman opens no PAM session: drop the line to run without one")),
    ("Service", "SELinuxContext", Error("doorman does not switch SELinux contexts")),
    ("Service", "AppArmorProfile", Error("doorman does not switch AppArmor profiles")),
    ("Service", "SmackProcessLabel", Error("doorman does not set Smack labels")),
    ("Service", "RestrictFileSystems", Error("doorman does not restrict file system types (it needs BPF LSM)")),
    ("Service", "DevicePolicy", Error("doorman does not filter device access by cgroup: use PrivateDevices=yes")),
    ("Service", "DeviceAllow", Error("doorman does not filter device access by cgroup: use PrivateDevices=yes")),
    ("Service", "IPAddressAllow", Error("a service's IP filter is a cgroup filter doorman does not make: put it in the .socket unit")),
    ("Service", "IPAddressDeny", Error("a service's IP filter is a cgroup filter doorman does not make: put it in the .socket unit")),
    ("Service", "SocketBindAllow", Error("doorman does not filter a handler's bind(2) calls")),
    ("Service", "SocketBindDeny", Error("doorman does not filter a handler's bind(2) calls")),
    ("Service", "NetworkNamespacePath", Error("doorman does not join other network namespaces")),
    ("Service", "IPCNamespacePath", Error("doorman does not join other IPC namespaces")),
    ("Service", "NoExecPaths", Error("doorman does not mount paths noexec")),
    ("Service", "ExecPaths", Error("doorman does not mount paths noexec")),
    ("Service", "SecureBits", Error("doorman does not set secure bits")),
    ("Service", "Sockets", Error("a service is started by the socket unit that names it")),
];

/// How doorman treats `section`'s `key=`; `None`: not in the table.
pub fn lookup(section: &str, key: &str) -> Option<Use> {
    TABLE
        .iter()
        .find(|(s, k, _)| *s == section && *k == key)
        .map(|&(_, _, u)| u)
}

/// The table as doorman.conf(5) prints it (mdoc), between its
/// `.\" BEGIN DIRECTIVES` and `.\" END DIRECTIVES` lines (a test
/// keeps the page in step).
#[cfg(test)]
pub fn man_table() -> String {
    let mut out = String::new();
    for section in ["Unit", "Socket", "Service"] {
        let rows: Vec<(&str, Use)> = TABLE
            .iter()
            .filter(|(s, _, _)| *s == section)
            .map(|&(_, k, u)| (k, u))
            .collect();
        out.push_str(&format!(".It Bq {section}\n.Bl -tag -width Ds -compact\n"));
        let list = |out: &mut String, title: &str, keys: Vec<&str>| {
            if keys.is_empty() {
                return;
            }
            out.push_str(&format!(".It {title}\n"));
            for (i, k) in keys.iter().enumerate() {
                let sep = if i + 1 == keys.len() { "" } else { " ," };
                out.push_str(&format!(".Cm {k}={sep}\n"));
            }
        };
        list(
            &mut out,
            "Applied:",
            rows.iter()
                .filter(|(_, u)| *u == Applied)
                .map(|(k, _)| *k)
                .collect(),
        );
        list(
            &mut out,
            "Accepted silently (ordering, dependencies, documentation):",
            rows.iter()
                .filter(|(_, u)| *u == Quiet)
                .map(|(k, _)| *k)
                .collect(),
        );
        for (title, warn) in [
            ("Accepted with a warning", true),
            ("Refused with an error", false),
        ] {
            let mut texts: Vec<&str> = Vec::new();
            for (_, u) in &rows {
                let t = match (u, warn) {
                    (Warn(t), true) | (Error(t), false) => *t,
                    _ => continue,
                };
                if !texts.contains(&t) {
                    texts.push(t);
                }
            }
            for t in texts {
                let keys: Vec<&str> = rows
                    .iter()
                    .filter(|(_, u)| matches!((u, warn), (Warn(x), true) | (Error(x), false) if *x == t))
                    .map(|(k, _)| *k)
                    .collect();
                list(&mut out, &format!("{title} ({t}):"), keys);
            }
        }
        out.push_str(".El\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// doorman.conf(5) prints this table; `DOORMAN_BLESS=1` rewrites it.
    #[test]
    fn the_man_page_prints_this_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/man/doorman.conf.5");
        let page = std::fs::read_to_string(path).unwrap();
        let (begin, end) = (".\\\" BEGIN DIRECTIVES\n", ".\\\" END DIRECTIVES\n");
        let a = page.find(begin).expect("BEGIN DIRECTIVES marker") + begin.len();
        let b = page.find(end).expect("END DIRECTIVES marker");
        let want = man_table();
        if page[a..b] != want && std::env::var_os("DOORMAN_BLESS").is_some() {
            std::fs::write(path, format!("{}{want}{}", &page[..a], &page[b..])).unwrap();
            return;
        }
        assert_eq!(
            page[a..b],
            want,
            "doorman.conf(5)'s directive table is stale: run with DOORMAN_BLESS=1"
        );
    }

    #[test]
    fn every_directive_once() {
        for (i, (s, k, _)) in TABLE.iter().enumerate() {
            assert!(
                !TABLE[i + 1..].iter().any(|(s2, k2, _)| s2 == s && k2 == k),
                "{s}.{k} twice"
            );
        }
    }
}
