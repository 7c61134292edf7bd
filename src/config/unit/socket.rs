//! The `[Socket]` section.

use super::*;

impl Builder {
    pub(super) fn socket(&mut self, all: &[Assignment]) {
        let (mut ip_allow, mut ip_deny) = (Vec::new(), Vec::new());
        let mut late_options: Vec<String> = Vec::new();
        let mut allow_at = None;
        let mut listens: Vec<(SockType, &Assignment)> = Vec::new();
        let (mut sock_user, mut sock_group, mut sock_mode) = (None, None, None);
        let mut max_conn: Option<u32> = Some(64);
        let mut trigger = (Duration::from_secs(2), None::<u32>);
        let mut poll = (Duration::from_secs(2), None::<u32>);
        let mut bind_v6 = None;
        for a in all.iter() {
            if !self.take(a, "Socket") {
                continue;
            }
            let v = a.value.as_str();
            let r: Result<(), String> = (|| {
                match a.key.as_str() {
                    "ListenStream" | "ListenDatagram" | "ListenSequentialPacket" => {
                        if v.is_empty() {
                            listens.clear();
                        } else {
                            let t = match a.key.as_str() {
                                "ListenStream" => SockType::Stream,
                                "ListenDatagram" => SockType::Dgram,
                                _ => SockType::SeqPacket,
                            };
                            listens.push((t, a));
                        }
                    }
                    "MaxConnections" => max_conn = Some(parse_u32(v)?).filter(|&n| n > 0),
                    "MaxConnectionsPerSource" => {
                        self.raw.limits.max_per_source = Some(parse_u32(v)?).filter(|&n| n > 0)
                    }
                    "Backlog" => {
                        self.raw.backlog =
                            Some(i32::try_from(parse_u32(v)?).map_err(|_| "too large")?)
                    }
                    "BindIPv6Only" => {
                        // systemd also takes a boolean: true is ipv6-only.
                        bind_v6 = match v {
                            "default" => None,
                            "both" => Some(false),
                            "ipv6-only" => Some(true),
                            _ => Some(parse_bool(v).map_err(|_| {
                                "expected default, both, ipv6-only or a boolean".to_string()
                            })?),
                        }
                    }
                    "ReusePort" => self.raw.sock_opts.reuseport = parse_bool(v)?,
                    "FreeBind" => self.raw.sock_opts.freebind = parse_bool(v)?,
                    "KeepAlive" => self.raw.sock_opts.keepalive = parse_bool(v)?,
                    "NoDelay" => self.raw.sock_opts.nodelay = parse_bool(v)?,
                    "ReceiveBuffer" => self.raw.rcvbuf = Some(parse_size32(v)?),
                    "SendBuffer" => self.raw.sndbuf = Some(parse_size32(v)?),
                    "SocketUser" => sock_user = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SocketGroup" => sock_group = Some(v.to_string()).filter(|s| !s.is_empty()),
                    "SocketMode" => sock_mode = Some(parse_mode(v)?),
                    "DirectoryMode" => self.raw.sock_opts.directory_mode = Some(parse_mode(v)?),
                    "RemoveOnStop" => self.raw.sock_opts.keep_on_stop = !parse_bool(v)?,
                    "FileDescriptorName" => {
                        if v.is_empty()
                            || v.len() > 255
                            || !v.chars().all(|c| c.is_ascii_graphic() && c != ':')
                        {
                            return Err("expected 1 to 255 printable characters, no ':'".into());
                        }
                        self.raw.fd_name = Some(v.to_string());
                    }
                    "TriggerLimitIntervalSec" => {
                        trigger.0 = parse_timespan(v)?.unwrap_or(Duration::ZERO)
                    }
                    "TriggerLimitBurst" => trigger.1 = Some(parse_u32(v)?),
                    "PollLimitIntervalSec" => poll.0 = parse_timespan(v)?.unwrap_or(Duration::ZERO),
                    "PollLimitBurst" => poll.1 = Some(parse_u32(v)?),
                    "IPAddressAllow" | "IPAddressDeny" => {
                        let list = if a.key == "IPAddressAllow" {
                            allow_at = Some(a.origin.clone());
                            &mut ip_allow
                        } else {
                            &mut ip_deny
                        };
                        if v.is_empty() {
                            list.clear();
                        }
                        for c in acl::parse_list(v.split_whitespace())? {
                            if !list.contains(&c) {
                                list.push(c);
                            }
                        }
                    }
                    "X-Doorman-Options" => {
                        // Checked now, applied after the directives so
                        // that they win over MaxConnections= & co.
                        let mut scratch = self.raw.clone();
                        options::apply_words(&mut scratch, v.split_whitespace())?;
                        late_options.push(v.to_string());
                    }
                    _ => {} // Accept, Service: read before
                }
                Ok(())
            })();
            if let Err(m) = r {
                self.errors.push(err(a, m));
            }
        }
        // systemd: an allow list without a deny list restricts nothing
        // (allow only makes exceptions to deny). So here too, but say so.
        if !ip_allow.is_empty() && ip_deny.is_empty() {
            if let Some(at) = allow_at {
                self.warnings.push(format!(
                    "{at}: IPAddressAllow= without IPAddressDeny= lets every client in (as in systemd); add IPAddressDeny=any to allow only these"
                ));
            }
            ip_allow.clear();
        }
        self.raw.allow.extend(ip_allow);
        self.raw.deny.extend(ip_deny);
        if listens.is_empty() {
            self.errors.push(ConfigError::new(
                &self.raw.origin,
                Some("ListenStream"),
                "the socket unit listens on nothing",
            ));
            return;
        }
        let ty = listens[0].0;
        self.raw.sock_type = ty;
        self.raw.v6only = bind_v6;
        let mixed = listens.iter().any(|(t, _)| *t != ty);
        for (t, a) in &listens {
            if mixed && self.raw.mode == Mode::Accept {
                self.errors.push(err(
                    a,
                    "with Accept=yes all Listen*= of one unit must be of the same socket type",
                ));
                continue;
            }
            let value = match self.specifiers(&a.value, false) {
                Ok(v) => v,
                Err(m) => {
                    self.errors.push(err(a, m));
                    continue;
                }
            };
            if mixed {
                self.raw.bind_types.push(*t);
            }
            match parse_listen_address(&value, *t) {
                Ok(RawBind::Unix { path, .. }) => self.raw.binds.push(RawBind::Unix {
                    path,
                    owner: sock_user.clone(),
                    group: sock_group.clone(),
                    mode: sock_mode,
                }),
                Ok(b) => self.raw.binds.push(b),
                Err(m) => self.errors.push(err(a, m)),
            }
        }
        if self.raw.mode == Mode::Accept {
            if ty == SockType::Dgram {
                self.errors.push(err(
                    listens[0].1,
                    "Accept=yes is for stream and seqpacket sockets (as in systemd); for one handler per UDP peer use a `dgram udp nowait` inetd.conf line or --socket-type dgram without --wait",
                ));
            }
            self.raw.limits.max_instances = max_conn;
        }
        // systemd.socket(5): TriggerLimitBurst= defaults to 200 activations
        // per 2 s for Accept=yes and 20 otherwise; PollLimitBurst= to 150
        // and 15 polling events per 2 s, per socket. Over the poll limit
        // the socket is not polled for the rest of the interval (clients
        // wait in the backlog), as in systemd; over the trigger limit the
        // service pauses for the interval and resumes by itself, where
        // systemd fails the socket unit until it is restarted.
        let accept = self.raw.mode == Mode::Accept;
        let burst_default = if accept { 200 } else { 20 };
        let trig_burst = trigger.1.unwrap_or(burst_default);
        self.raw.limits.rate = (trig_burst > 0 && !trigger.0.is_zero()).then_some(Rate {
            max: trig_burst,
            interval: trigger.0,
            pause: trigger.0,
        });
        let poll_burst = poll.1.unwrap_or(if accept { 150 } else { 15 });
        self.raw.limits.poll = (poll_burst > 0 && !poll.0.is_zero()).then_some(Rate {
            max: poll_burst,
            interval: poll.0,
            pause: poll.0,
        });
        for v in &late_options {
            options::apply_words(&mut self.raw, v.split_whitespace()).expect("checked when read");
        }
    }
}
