//! `member list|add|remove|update|promote` (the Cluster service) and `endpoint status|health`
//! (per-endpoint Maintenance.Status and a linearizable read plus the alarm list), with
//! etcdctl's simple, JSON and table output.

use std::time::Instant;

use clap::{Args, Subcommand};
use raftkv_proto::etcdserverpb::cluster_client::ClusterClient;
use raftkv_proto::etcdserverpb::kv_client::KvClient;
use raftkv_proto::etcdserverpb::maintenance_client::MaintenanceClient;
use raftkv_proto::etcdserverpb::{
    AlarmRequest, AlarmType, Member, MemberAddRequest, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest, RangeRequest, StatusRequest,
    StatusResponse,
};

use super::conn::{dial, Conn, Retry};
use super::format::{self, emit, emit_err, Format, Obj};
use super::{parse_hex_id, CtlError, CtlResult, GlobalArgs, EXIT_ERROR};

/// `member` and its subcommands.
#[derive(Args, Debug, Clone)]
pub(crate) struct MemberArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    #[command(subcommand)]
    pub(crate) command: MemberCommand,
}

/// The member subcommands.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum MemberCommand {
    /// Lists all members in the cluster.
    List,
    /// Adds a member into the cluster.
    Add {
        /// Comma separated peer URLs for the new member.
        #[arg(long, default_value = "")]
        peer_urls: String,
        /// Indicates if the new member is raft learner.
        #[arg(long)]
        learner: bool,
        /// The new member's name.
        #[arg(value_name = "NAME")]
        args: Vec<String>,
    },
    /// Removes a member from the cluster.
    Remove {
        /// The member id in hexadecimal.
        #[arg(value_name = "MEMBER_ID")]
        args: Vec<String>,
    },
    /// Updates a member in the cluster.
    Update {
        /// Comma separated peer URLs for the updated member.
        #[arg(long, default_value = "")]
        peer_urls: String,
        /// The member id in hexadecimal.
        #[arg(value_name = "MEMBER_ID")]
        args: Vec<String>,
    },
    /// Promotes a non-voting member in the cluster.
    Promote {
        /// The member id in hexadecimal.
        #[arg(value_name = "MEMBER_ID")]
        args: Vec<String>,
    },
}

/// `endpoint` and its subcommands.
#[derive(Args, Debug, Clone)]
pub(crate) struct EndpointArgs {
    #[command(flatten)]
    pub(crate) global: GlobalArgs,
    /// Use all endpoints from the cluster member list.
    #[arg(long, global = true)]
    pub(crate) cluster: bool,
    #[command(subcommand)]
    pub(crate) command: EndpointCommand,
}

/// The endpoint subcommands.
#[derive(Subcommand, Debug, Clone)]
pub(crate) enum EndpointCommand {
    /// Prints out the status of endpoints specified in `--endpoints` flag.
    Status,
    /// Checks the healthiness of endpoints specified in `--endpoints` flag.
    Health,
}

fn member_id(args: &[String]) -> Result<u64, CtlError> {
    let Some(arg) = args.first() else {
        return Err(CtlError::args("member ID is not provided"));
    };
    parse_hex_id(arg).map_err(|e| {
        let what = match e.kind() {
            std::num::IntErrorKind::PosOverflow => "value out of range",
            _ => "invalid syntax",
        };
        CtlError::args(format!(
            "bad member ID arg (strconv.ParseUint: parsing {arg:?}: {what}), expecting ID in Hex"
        ))
    })
}

/// `--peer-urls` as a list (comma separated, blanks dropped).
fn split_urls(flag: &str) -> Vec<String> {
    flag.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

fn member_rows(members: &[Member]) -> Vec<Vec<String>> {
    members
        .iter()
        .map(|m| {
            vec![
                format!("{:x}", m.id),
                if m.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_string(),
                m.name.clone(),
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(","),
                m.is_learner.to_string(),
            ]
        })
        .collect()
}

async fn member_list(conn: &mut Conn) -> Result<MemberListResponse, CtlError> {
    conn.call(Retry::Safe, |ch| async move {
        ClusterClient::new(ch)
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await
    })
    .await
}

/// `member ...`.
pub(crate) async fn member(a: MemberArgs) -> CtlResult {
    let fmt = a.global.format()?;
    match a.command {
        MemberCommand::List => {
            let mut conn = Conn::connect(&a.global).await?;
            let resp = member_list(&mut conn).await?;
            emit(&match fmt {
                Format::Json => {
                    format::json_members(resp.header.as_ref(), None, &resp.members) + "\n"
                }
                Format::Table => format::table(
                    &[
                        "ID",
                        "STATUS",
                        "NAME",
                        "PEER ADDRS",
                        "CLIENT ADDRS",
                        "IS LEARNER",
                    ],
                    &member_rows(&resp.members),
                ),
                Format::Simple => member_rows(&resp.members)
                    .iter()
                    .map(|r| r.join(", ") + "\n")
                    .collect(),
            });
        }
        MemberCommand::Add {
            peer_urls,
            learner,
            args,
        } => {
            let fmt = fmt.no_table()?;
            if args.len() != 1 {
                return Err(CtlError::args("member name not provided"));
            }
            let name = args[0].clone();
            let urls = split_urls(&peer_urls);
            if urls.is_empty() {
                return Err(CtlError::args("member peer urls not provided"));
            }
            let mut conn = Conn::connect(&a.global).await?;
            let req = MemberAddRequest {
                peer_ur_ls: urls.clone(),
                is_learner: learner,
            };
            let resp = conn
                .call(Retry::Never, |ch| {
                    let req = req.clone();
                    async move { ClusterClient::new(ch).member_add(req).await }
                })
                .await?;
            if fmt == Format::Json {
                emit(
                    &(format::json_members(
                        resp.header.as_ref(),
                        resp.member.as_ref(),
                        &resp.members,
                    ) + "\n"),
                );
                return Ok(());
            }
            let new = resp.member.clone().unwrap_or_default();
            let cluster_id = resp.header.as_ref().map_or(0, |h| h.cluster_id);
            let as_learner = if new.is_learner { " as learner " } else { " " };
            let mut out = format!(
                "Member {:16x} added{as_learner}to cluster {cluster_id:16x}\n",
                new.id
            );
            let members = if resp.members.is_empty() {
                member_list(&mut conn).await?.members
            } else {
                resp.members.clone()
            };
            let mut conf = Vec::new();
            for m in &members {
                for u in &m.peer_ur_ls {
                    let n = if m.id == new.id { &name } else { &m.name };
                    conf.push(format!("{n}={u}"));
                }
            }
            out.push('\n');
            out.push_str(&format!("ETCD_NAME={name:?}\n"));
            out.push_str(&format!("ETCD_INITIAL_CLUSTER={:?}\n", conf.join(",")));
            out.push_str(&format!(
                "ETCD_INITIAL_ADVERTISE_PEER_URLS={:?}\n",
                urls.join(",")
            ));
            out.push_str("ETCD_INITIAL_CLUSTER_STATE=\"existing\"\n");
            emit(&out);
        }
        MemberCommand::Remove { args } => {
            let fmt = fmt.no_table()?;
            let id = member_id(&args)?;
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Never, |ch| async move {
                    ClusterClient::new(ch)
                        .member_remove(MemberRemoveRequest { id })
                        .await
                })
                .await?;
            print_change(fmt, resp.header.as_ref(), &resp.members, id, "removed from");
        }
        MemberCommand::Update { peer_urls, args } => {
            let fmt = fmt.no_table()?;
            if args.len() != 1 {
                return Err(CtlError::args("member ID is not provided"));
            }
            let id = member_id(&args)?;
            let urls = split_urls(&peer_urls);
            if urls.is_empty() {
                return Err(CtlError::args("member peer urls not provided"));
            }
            let mut conn = Conn::connect(&a.global).await?;
            let req = MemberUpdateRequest {
                id,
                peer_ur_ls: urls,
            };
            let resp = conn
                .call(Retry::Never, |ch| {
                    let req = req.clone();
                    async move { ClusterClient::new(ch).member_update(req).await }
                })
                .await?;
            print_change(fmt, resp.header.as_ref(), &resp.members, id, "updated in");
        }
        MemberCommand::Promote { args } => {
            let fmt = fmt.no_table()?;
            let id = member_id(&args)?;
            let mut conn = Conn::connect(&a.global).await?;
            let resp = conn
                .call(Retry::Never, |ch| async move {
                    ClusterClient::new(ch)
                        .member_promote(MemberPromoteRequest { id })
                        .await
                })
                .await?;
            print_change(fmt, resp.header.as_ref(), &resp.members, id, "promoted in");
        }
    }
    Ok(())
}

/// etcdctl's answer to `member remove` / `member promote`: the members as JSON, or one line.
fn print_change(
    fmt: Format,
    header: Option<&raftkv_proto::etcdserverpb::ResponseHeader>,
    members: &[raftkv_proto::etcdserverpb::Member],
    id: u64,
    verb: &str,
) {
    let cluster_id = header.map_or(0, |h| h.cluster_id);
    emit(&match fmt {
        Format::Json => format::json_members(header, None, members) + "\n",
        _ => format!("Member {id:16x} {verb} cluster {cluster_id:16x}\n"),
    });
}

/// The endpoints to act on: `--endpoints`, or (`cluster`) every client URL in the member list.
pub(crate) async fn target_endpoints(
    global: &GlobalArgs,
    cluster: bool,
) -> Result<Vec<String>, CtlError> {
    if !cluster {
        return Ok(global.endpoint_list());
    }
    let mut conn = Conn::connect(global).await?;
    let resp = member_list(&mut conn).await.map_err(|e| {
        CtlError::new(
            EXIT_ERROR,
            format!(
                "failed to fetch endpoints from etcd cluster member list: {}",
                e.message
            ),
        )
    })?;
    Ok(resp
        .members
        .iter()
        .flat_map(|m| m.client_ur_ls.iter().cloned())
        .collect())
}

/// One endpoint's health, as etcdctl's `epHealth`.
struct Health {
    endpoint: String,
    healthy: bool,
    took: String,
    error: String,
}

async fn check_health(g: GlobalArgs, endpoint: String) -> Health {
    let start = Instant::now();
    let mut h = Health {
        endpoint: endpoint.clone(),
        healthy: false,
        took: String::new(),
        error: String::new(),
    };
    let result = async {
        let ch = dial(&endpoint, g.dial_timeout).await?;
        let deadline = g.command_timeout;
        let mut kv = KvClient::new(ch.clone());
        let get = kv.range(RangeRequest {
            key: b"health".to_vec(),
            ..Default::default()
        });
        match tokio::time::timeout(deadline, get).await {
            Ok(Ok(_)) => {}
            Ok(Err(s)) if s.message() == "etcdserver: permission denied" => {}
            Ok(Err(s)) => return Err(CtlError::from(s)),
            Err(_) => return Err(CtlError::new(EXIT_ERROR, super::conn::DEADLINE)),
        }
        let mut maintenance = MaintenanceClient::new(ch);
        let alarms = maintenance.alarm(AlarmRequest::default());
        match tokio::time::timeout(deadline, alarms).await {
            Ok(Ok(resp)) => Ok(resp.into_inner().alarms),
            _ => Err(CtlError::new(EXIT_ERROR, "Unable to fetch the alarm list")),
        }
    }
    .await;
    match result {
        Ok(alarms) if alarms.is_empty() => h.healthy = true,
        Ok(alarms) => {
            h.error = "Active Alarm(s): ".to_string();
            for a in alarms {
                let name = AlarmType::try_from(a.alarm).map_or("NONE", |t| t.as_str_name());
                h.error.push_str(name);
                h.error.push(' ');
            }
        }
        Err(e) => h.error = e.message,
    }
    h.took = format::go_duration(start.elapsed());
    h
}

async fn status_of(g: &GlobalArgs, endpoint: &str) -> Result<StatusResponse, CtlError> {
    let ch = dial(endpoint, g.dial_timeout).await?;
    let mut client = MaintenanceClient::new(ch);
    let call = client.status(StatusRequest {});
    match tokio::time::timeout(g.command_timeout, call).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(s.into()),
        Err(_) => Err(CtlError::new(EXIT_ERROR, super::conn::DEADLINE)),
    }
}

/// `endpoint ...`.
pub(crate) async fn endpoint(a: EndpointArgs) -> CtlResult {
    let fmt = a.global.format()?;
    let endpoints = target_endpoints(&a.global, a.cluster).await?;
    match a.command {
        EndpointCommand::Health => {
            let mut set = tokio::task::JoinSet::new();
            for (i, ep) in endpoints.iter().enumerate() {
                let g = a.global.clone();
                let ep = ep.clone();
                set.spawn(async move { (i, check_health(g, ep).await) });
            }
            let mut results: Vec<(usize, Health)> = Vec::new();
            while let Some(r) = set.join_next().await {
                if let Ok(r) = r {
                    results.push(r);
                }
            }
            results.sort_by_key(|(i, _)| *i);
            let hs: Vec<Health> = results.into_iter().map(|(_, h)| h).collect();
            match fmt {
                Format::Simple => {
                    for h in &hs {
                        if h.error.is_empty() {
                            emit(&format!(
                                "{} is healthy: successfully committed proposal: took = {}\n",
                                h.endpoint, h.took
                            ));
                        } else {
                            emit_err(&format!(
                                "{} is unhealthy: failed to commit proposal: {}\n",
                                h.endpoint, h.error
                            ));
                        }
                    }
                }
                Format::Json => {
                    let items = hs
                        .iter()
                        .map(|h| {
                            Obj::new()
                                .string_always("endpoint", &h.endpoint)
                                .bool_always("health", h.healthy)
                                .string_always("took", &h.took)
                                .string("error", &h.error)
                                .end()
                        })
                        .collect();
                    emit(&(format::array(items) + "\n"));
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = hs
                        .iter()
                        .map(|h| {
                            vec![
                                h.endpoint.clone(),
                                h.healthy.to_string(),
                                h.took.clone(),
                                h.error.clone(),
                            ]
                        })
                        .collect();
                    emit(&format::table(
                        &["ENDPOINT", "HEALTH", "TOOK", "ERROR"],
                        &rows,
                    ));
                }
            }
            if hs.iter().any(|h| !h.healthy) {
                return Err(CtlError::new(EXIT_ERROR, "unhealthy cluster"));
            }
        }
        EndpointCommand::Status => {
            let mut statuses = Vec::new();
            let mut failed = false;
            for ep in &endpoints {
                match status_of(&a.global, ep).await {
                    Ok(s) => statuses.push((ep.clone(), s)),
                    Err(e) => {
                        failed = true;
                        emit_err(&format!(
                            "Failed to get the status of endpoint {ep} ({})\n",
                            e.message
                        ));
                    }
                }
            }
            let rows: Vec<Vec<String>> = statuses
                .iter()
                .map(|(ep, s)| {
                    let id = s.header.as_ref().map_or(0, |h| h.member_id);
                    vec![
                        ep.clone(),
                        format!("{id:x}"),
                        s.version.clone(),
                        format::humanize_bytes(s.db_size.max(0) as u64),
                        (s.leader == id).to_string(),
                        s.is_learner.to_string(),
                        s.raft_term.to_string(),
                        s.raft_index.to_string(),
                        s.raft_applied_index.to_string(),
                        s.errors.join(", "),
                    ]
                })
                .collect();
            match fmt {
                Format::Simple => {
                    emit(&rows.iter().map(|r| r.join(", ") + "\n").collect::<String>())
                }
                Format::Json => {
                    let items = statuses
                        .iter()
                        .map(|(ep, s)| {
                            Obj::new()
                                .string_always("Endpoint", ep)
                                .raw("Status", format::json_status(s))
                                .end()
                        })
                        .collect();
                    emit(&(format::array(items) + "\n"));
                }
                Format::Table => emit(&format::table(
                    &[
                        "ENDPOINT",
                        "ID",
                        "VERSION",
                        "DB SIZE",
                        "IS LEADER",
                        "IS LEARNER",
                        "RAFT TERM",
                        "RAFT INDEX",
                        "RAFT APPLIED INDEX",
                        "ERRORS",
                    ],
                    &rows,
                )),
            }
            if failed {
                // etcdctl exits 1 after the table, without another message.
                return Err(CtlError::new(EXIT_ERROR, String::new()));
            }
        }
    }
    Ok(())
}
