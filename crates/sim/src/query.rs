//! The query service: `GET /api/query?type=…` (query_service.md, query_type.md,
//! optional_query_parameters.md and the pages it links).
//!
//! Simulated types: `VmRestorePoint` (get_query_vmrestorepoint.md),
//! `BackupJobSession` (get_query_backupjobsession.md), `Job`
//! (get_query_job.md) and `Task` (get_query_task.md: only the calling logon
//! session's tasks, in `Resources`, whatever `format` says). Parameters:
//! - `format`: `References` (the default, format.md) or `Entities`;
//! - `pageSize`, `page` (pagesize_and_page.md): all results on one page unless
//!   `pageSize` (> 0) is given; `PagingInfo` links to the first, previous, next
//!   and last pages as sample 07 shows (it shows First, Next and Last on page 1;
//!   `Previous` is named by analogy, the docs never show it);
//! - `sortAsc`, `sortDesc` (sortasc_sortdesc.md): one field, from the type's
//!   parameter table;
//! - `filter` (filter.md and the pages it links): comparisons `== != < > <= >=`
//!   on the type's parameters, `;` (AND), `,` (OR) and parentheses. The docs do
//!   not rank AND against OR; here AND binds tighter, as in most languages.
//!   Strings compare ignoring case, enumerations by their index
//!   (query_comparison.md), UIDs by their GUID (with or without the `urn:` prefix).
//!
//! Every malformed query is a 400 `<Error>` (http_response_codes.md: the request
//! is malformed or invalid); a type the docs list but the simulator lacks is a 501.

use std::cmp::{Ordering, Reverse};

use uuid::Uuid;

use super::data::{Data, SessionResult};
use super::jobs;
use super::model::{Document, Element, Link, RootStyle};
use super::resources;
use super::state::Task;
use super::time::Civil;

/// Every member of EM's `Entities` class, in its order and spelling
/// (json-facts.md): JSON sends them all, `null` but for the one filled.
const ENTITY_MEMBERS: [&str; 50] = [
    "Jobs",
    "FailoverPlans",
    "Backups",
    "Replicas",
    "Repositories",
    "RestorePoints",
    "VmRestorePoints",
    "VAppRestorePoints",
    "VmReplicaPoints",
    "BackupJobSessions",
    "ReplicaJobSessions",
    "ReplicaTaskSessions",
    "RestoreSessions",
    "HierarchyRoots",
    "BackupTaskSessions",
    "BackupServers",
    "ManagedServers",
    "EnterpiseRoles",
    "EnterpiseAccounts",
    "WanAccelerators",
    "CloudGateways",
    "CloudTenants",
    "CloudReplicas",
    "VCloudOrganizationConfigs",
    "BackupFiles",
    "VSphereSelfServiceConfigs",
    "CloudPublicIps",
    "CloudHardwarePlans",
    "CloudVmReplicaPoints",
    "AgentRestorePoints",
    "AgentBackupJob",
    "CloudGatewayPools",
    "CloudFailoverPlans",
    "ExternalRepositories",
    "VlanConfigurations",
    "CloudFailoverSessions",
    "AgentProtectionGroups",
    "DiscoveredComputers",
    "FileServers",
    "NASJobs",
    "CdpReplicas",
    "CdpReplicaVms",
    "CdpPolicies",
    "CdpReplicaSessions",
    "CdpReplicaTaskSessions",
    "VAppReplicaPoints",
    "VmCdpReplicas",
    "VAppCdpReplicas",
    "VAppCdpReplicaVms",
    "SystemSessions",
];

/// Every member of `Resources` in a query result (RestAPI.xsd `ResourcesType`).
/// JSON sends them all, `null` but for the one filled, as it does `Entities`'
/// (json-facts.md shows that for `Entities`; `Resources` is taken to be alike).
const RESOURCE_MEMBERS: [&str; 8] = [
    "Files",
    "Directories",
    "Tasks",
    "CredentialsList",
    "sInObjectJob",
    "AccountRole",
    "AccountHierarchyScope",
    "PasswordKeyInfoList",
];

/// The query types query_type.md lists; those not simulated answer 501.
const DOCUMENTED_TYPES: [&str; 48] = [
    "AgentBackupJob",
    "AgentProtectionGroup",
    "AgentRestorePoint",
    "Backup",
    "BackupFile",
    "BackupJobSession",
    "BackupServer",
    "BackupTaskSession",
    "CdpPolicy",
    "CdpReplica",
    "CdpReplicaSession",
    "CdpReplicaTaskSession",
    "CloudGateway",
    "CloudGatewayPool",
    "CloudTenant",
    "CloudFailoverPlan",
    "CloudFailoverSession",
    "CloudHardwarePlan",
    "CloudPublicIpAddress",
    "CloudReplica",
    "CloudSubtenant",
    "CloudVmReplicaPoint",
    "Credentials",
    "DiscoveredComputer",
    "FailoverPlan",
    "FileServer",
    "HierarchyRoot",
    "Job",
    "ManagedServer",
    "NasJob",
    "NasObject",
    "ObjectInJob",
    "Passwords",
    "Replica",
    "ReplicaJobSession",
    "ReplicaTaskSession",
    "Repository",
    "RestorePoint",
    "RestoreSession",
    "Task",
    "vAppReplicaPoint",
    "vAppRestorePoint",
    "VCloudOrganizationConfig",
    "VlanConfiguration",
    "VmReplicaPoint",
    "VmRestorePoint",
    "VsphereSelfServiceConfig",
    "WanAccelerator",
];

/// Why a query has no result.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum QueryError {
    /// Malformed: 400.
    Bad(String),
    /// A documented type the simulator does not have: 501.
    NotSimulated(String),
}

fn bad<T>(message: String) -> Result<T, QueryError> {
    Err(QueryError::Bad(message))
}

/// A simulated query type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    RestorePoint,
    VmRestorePoint,
    BackupJobSession,
    Job,
    Task,
}

/// How a parameter's values compare.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    /// `UidType`: compared by the GUID, with or without `urn:veeam:Type:`.
    Uid,
    /// `DateTime`, UTC only.
    Time,
    /// One of these, compared by index (query_comparison.md).
    Enum(&'static [&'static str]),
    Bool,
}

/// `Type` of a VM restore point (get_query_vmrestorepoint.md).
const POINT_TYPES: &[&str] = &["Full", "Increment", "ReverseIncrement"];
/// `Algorithm` of a VM restore point (get_query_vmrestorepoint.md).
const ALGORITHMS: &[&str] = &[
    "Full",
    "ReversedIncremental",
    "Incremental",
    "SyntheticFull",
];
/// `JobType` of a session (get_query_backupjobsession.md).
const SESSION_JOB_TYPES: &[&str] = &[
    "Backup",
    "BackupCopy",
    "ImmediateBackupCopy",
    "ImmediateBackupCopyWorker",
    "AgentBackup",
    "AgentManagement",
    "NasBackup",
];
/// `State` of a session (get_query_backupjobsession.md).
const SESSION_STATES: &[&str] = &[
    "Starting", "Stopping", "Working", "Pausing", "Resuming", "Stopped",
];
/// `Result` of a session (get_query_backupjobsession.md).
const RESULTS: &[&str] = &SessionResult::NAMES;
/// `JobType` of a job (get_query_job.md).
const JOB_TYPES: &[&str] = &["Backup", "BackupCopy", "ImmediateBackupCopy", "Replica"];
/// `Platform` of a job (get_query_job.md).
const PLATFORMS: &[&str] = &["VMware", "Hyperv", "vCloud"];

impl Type {
    fn parse(name: &str) -> Result<Type, QueryError> {
        let simulated = [
            ("RestorePoint", Type::RestorePoint),
            ("VmRestorePoint", Type::VmRestorePoint),
            ("BackupJobSession", Type::BackupJobSession),
            ("Job", Type::Job),
            ("Task", Type::Task),
        ];
        if let Some((_, t)) = simulated.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Ok(*t);
        }
        if DOCUMENTED_TYPES
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Err(QueryError::NotSimulated(format!(
                "The simulator does not implement queries of type [{name}]."
            )));
        }
        bad(format!("Query type [{name}] is not supported."))
    }

    /// The parameters the type's docs page lists for filtering and sorting.
    fn fields(self) -> &'static [(&'static str, Kind)] {
        match self {
            Type::RestorePoint => &[
                ("UID", Kind::Uid),
                ("Name", Kind::Str),
                ("CreationTime", Kind::Time),
                ("BackupUid", Kind::Uid),
                ("BackupName", Kind::Str),
                ("BackupServerUid", Kind::Uid),
                ("BackupServerName", Kind::Str),
            ],
            Type::VmRestorePoint => &[
                ("UID", Kind::Uid),
                ("Name", Kind::Str),
                ("CreationTime", Kind::Time),
                ("Type", Kind::Enum(POINT_TYPES)),
                ("Algorithm", Kind::Enum(ALGORITHMS)),
                ("RestorePointId", Kind::Uid),
                ("RestorePointName", Kind::Str),
                ("VmDisplayName", Kind::Str),
                ("BackupServerUid", Kind::Uid),
                ("BackupServerName", Kind::Str),
            ],
            Type::BackupJobSession => &[
                ("UID", Kind::Uid),
                ("Name", Kind::Str),
                ("JobType", Kind::Enum(SESSION_JOB_TYPES)),
                ("JobUid", Kind::Uid),
                ("JobName", Kind::Str),
                ("CreationTime", Kind::Time),
                ("EndTime", Kind::Time),
                ("State", Kind::Enum(SESSION_STATES)),
                ("Result", Kind::Enum(RESULTS)),
                ("IsRetry", Kind::Bool),
                ("BackupServerUid", Kind::Uid),
                ("BackupServerName", Kind::Str),
            ],
            Type::Job => &[
                ("UID", Kind::Uid),
                ("Name", Kind::Str),
                ("Description", Kind::Str),
                ("NextRun", Kind::Time),
                ("JobType", Kind::Enum(JOB_TYPES)),
                ("Platform", Kind::Enum(PLATFORMS)),
                ("ScheduleConfigured", Kind::Bool),
                ("ScheduleEnabled", Kind::Bool),
                ("BackupServerUid", Kind::Uid),
                ("BackupServerName", Kind::Str),
            ],
            Type::Task => &[
                ("TaskId", Kind::Str),
                ("State", Kind::Enum(&jobs::TASK_STATES)),
                ("Operation", Kind::Str),
            ],
        }
    }

    /// The parameter named `name` (ignoring case), in its canonical spelling.
    fn field(self, name: &str) -> Result<(&'static str, Kind), QueryError> {
        match self
            .fields()
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some(&field) => Ok(field),
            None => bad(format!(
                "Parameter [{name}] is not a query parameter of this type."
            )),
        }
    }

    /// Where its results go in a `QueryResult`: a member of `Entities` (with
    /// `format=Entities`) or of `Resources` (always, for resources such as tasks).
    fn result_member(self) -> Result<&'static str, &'static str> {
        match self {
            Type::RestorePoint => Ok("RestorePoints"),
            Type::VmRestorePoint => Ok("VmRestorePoints"),
            Type::BackupJobSession => Ok("BackupJobSessions"),
            Type::Job => Ok("Jobs"),
            Type::Task => Err("Tasks"),
        }
    }
}

/// A comparable value: of a parameter, or of a literal in a filter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Val {
    /// Lowercased (strings compare ignoring case); a UID's bare GUID.
    Str(String),
    Time(i64),
    Index(usize),
    Bool(bool),
}

impl Val {
    /// A literal from a filter, read as a value of `kind`.
    fn literal(kind: Kind, field: &str, raw: &str) -> Result<Val, QueryError> {
        let invalid = || {
            bad(format!(
                "Value [{raw}] is not valid for parameter [{field}]."
            ))
        };
        match kind {
            Kind::Str => Ok(Val::Str(raw.to_lowercase())),
            Kind::Uid => Ok(Val::Str(bare_uid(raw))),
            Kind::Time => Civil::parse_utc(raw).map_or_else(invalid, |ms| Ok(Val::Time(ms))),
            Kind::Enum(names) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(raw))
                .map_or_else(invalid, |i| Ok(Val::Index(i))),
            Kind::Bool => match raw.to_ascii_lowercase().as_str() {
                "true" => Ok(Val::Bool(true)),
                "false" => Ok(Val::Bool(false)),
                _ => invalid(),
            },
        }
    }
}

/// The GUID of a UID, lowercase: `urn:veeam:Job:ABC…` and `abc…` are the same.
fn bare_uid(s: &str) -> String {
    s.rsplit(':').next().unwrap_or(s).to_ascii_lowercase()
}

fn uid(id: &Uuid) -> Val {
    Val::Str(id.to_string())
}

fn text(s: &str) -> Val {
    Val::Str(s.to_lowercase())
}

/// One result of a query.
#[derive(Clone, Copy, Debug)]
enum Item {
    /// A restore point.
    Point(usize),
    /// (restore point, VM in it)
    Vm(usize, usize),
    Session(usize),
    Job(usize),
    /// Index into the calling session's tasks.
    Task(usize),
}

/// What a query looks through: the estate, and the calling session's tasks.
struct Source<'a> {
    data: &'a Data,
    tasks: &'a [Task],
}

/// The value of parameter `field` (canonical spelling) for an item; `None` when
/// the item has none (a disabled job's `NextRun`).
fn value(src: &Source<'_>, item: Item, field: &str) -> Option<Val> {
    let data = src.data;
    match item {
        Item::Point(i) => {
            let rp = &data.points[i];
            let server = data.server(rp);
            let job = data.job(rp);
            Some(match field {
                "UID" => uid(&rp.id),
                "Name" => text(&data.rp_name(rp)),
                "CreationTime" => Val::Time(rp.backup_ms),
                // A job's backup has the job's id in the simulator.
                "BackupUid" => uid(&job.id),
                "BackupName" => text(&job.name),
                "BackupServerUid" => uid(&server.id),
                "BackupServerName" => text(&server.name),
                _ => return None,
            })
        }
        Item::Vm(i, k) => {
            let rp = &data.points[i];
            let vm = &rp.vms[k];
            let server = data.server(rp);
            Some(match field {
                "UID" => uid(&vm.id),
                "Name" => text(&data.vm_point_name(rp, vm)),
                "CreationTime" => Val::Time(vm.created_ms),
                "Type" => Val::Index(if rp.full { 0 } else { 1 }),
                "Algorithm" => Val::Index(if rp.full { 0 } else { 2 }),
                "RestorePointId" => uid(&rp.id),
                "RestorePointName" => text(&data.rp_name(rp)),
                "VmDisplayName" => text(&data.vm(rp, vm).name),
                "BackupServerUid" => uid(&server.id),
                "BackupServerName" => text(&server.name),
                _ => return None,
            })
        }
        Item::Session(i) => {
            let s = &data.sessions[i];
            let job = &data.jobs[s.job];
            let server = &data.servers[job.server];
            Some(match field {
                "UID" => uid(&s.id),
                "Name" => text(&data.session_name(s)),
                "JobType" => Val::Index(0),
                "JobUid" => uid(&job.id),
                "JobName" => text(&job.name),
                "CreationTime" => Val::Time(s.start_ms),
                "EndTime" => Val::Time(s.end_ms),
                "State" => Val::Index(
                    SESSION_STATES
                        .iter()
                        .position(|n| *n == jobs::SESSION_STATE)
                        .unwrap_or(0),
                ),
                "Result" => Val::Index(s.result.index()),
                "IsRetry" => Val::Bool(s.is_retry),
                "BackupServerUid" => uid(&server.id),
                "BackupServerName" => text(&server.name),
                _ => return None,
            })
        }
        Item::Job(j) => {
            let job = &data.jobs[j];
            let server = &data.servers[job.server];
            Some(match field {
                "UID" => uid(&job.id),
                "Name" => text(&job.name),
                "Description" => text(&jobs::description(data, job)),
                "NextRun" => Val::Time(data.next_run_ms(j)?),
                "JobType" => Val::Index(0),
                "Platform" => Val::Index(0),
                "ScheduleConfigured" => Val::Bool(true),
                "ScheduleEnabled" => Val::Bool(job.schedule_enabled),
                "BackupServerUid" => uid(&server.id),
                "BackupServerName" => text(&server.name),
                _ => return None,
            })
        }
        Item::Task(i) => {
            let t = &src.tasks[i];
            Some(match field {
                "TaskId" => text(&t.id()),
                "State" => Val::Index(jobs::task_state(t)),
                "Operation" => text("StartJob"),
                _ => return None,
            })
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
}

/// A parsed `filter`.
#[derive(Debug)]
enum Expr {
    Or(Vec<Expr>),
    And(Vec<Expr>),
    Cmp {
        field: &'static str,
        op: Op,
        value: Val,
    },
}

impl Expr {
    fn matches(&self, src: &Source<'_>, item: Item) -> bool {
        match self {
            Expr::Or(terms) => terms.iter().any(|t| t.matches(src, item)),
            Expr::And(terms) => terms.iter().all(|t| t.matches(src, item)),
            Expr::Cmp {
                field,
                op,
                value: want,
            } => {
                let Some(have) = value(src, item, field) else {
                    // Nothing compares to a missing value but "not equal".
                    return *op == Op::Ne;
                };
                let ord = have.cmp(want);
                match op {
                    Op::Eq => ord == Ordering::Equal,
                    Op::Ne => ord != Ordering::Equal,
                    Op::Lt => ord == Ordering::Less,
                    Op::Gt => ord == Ordering::Greater,
                    Op::Le => ord != Ordering::Greater,
                    Op::Ge => ord != Ordering::Less,
                }
            }
        }
    }
}

/// A recursive-descent reader of the filter grammar (module doc).
struct FilterParser<'a> {
    typ: Type,
    s: &'a [u8],
    src: &'a str,
    pos: usize,
    depth: usize,
}

/// How deep parentheses may nest: a bound on recursion for hostile input.
const MAX_DEPTH: usize = 32;

impl FilterParser<'_> {
    fn parse(typ: Type, src: &str) -> Result<Expr, QueryError> {
        let mut p = FilterParser {
            typ,
            s: src.as_bytes(),
            src,
            pos: 0,
            depth: 0,
        };
        let expr = p.or()?;
        p.skip_spaces();
        if p.pos != p.s.len() {
            return p.error();
        }
        Ok(expr)
    }

    fn error<T>(&self) -> Result<T, QueryError> {
        bad(format!(
            "The filter [{}] is malformed at character {}.",
            self.src,
            self.pos + 1
        ))
    }

    fn skip_spaces(&mut self) {
        while self.s.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_spaces();
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut terms = vec![self.and()?];
        while self.eat(b',') {
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut terms = vec![self.factor()?];
        while self.eat(b';') {
            terms.push(self.factor()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::And(terms)
        })
    }

    fn factor(&mut self) -> Result<Expr, QueryError> {
        if self.eat(b'(') {
            if self.depth == MAX_DEPTH {
                return self.error();
            }
            self.depth += 1;
            let inner = self.or()?;
            self.depth -= 1;
            if !self.eat(b')') {
                return self.error();
            }
            return Ok(inner);
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Expr, QueryError> {
        self.skip_spaces();
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            self.pos += 1;
        }
        if self.pos == start {
            return self.error();
        }
        let (field, kind) = self.typ.field(&self.src[start..self.pos])?;
        self.skip_spaces();
        let rest = &self.s[self.pos..];
        let (op, len) = match rest {
            [b'=', b'=', ..] => (Op::Eq, 2),
            [b'!', b'=', ..] => (Op::Ne, 2),
            [b'<', b'=', ..] => (Op::Le, 2),
            [b'>', b'=', ..] => (Op::Ge, 2),
            [b'<', ..] => (Op::Lt, 1),
            [b'>', ..] => (Op::Gt, 1),
            _ => return self.error(),
        };
        self.pos += len;
        let raw = self.literal()?;
        let value = Val::literal(kind, field, &raw)?;
        Ok(Expr::Cmp { field, op, value })
    }

    /// A value: quoted, with `""` for a quote inside, or bare up to the next
    /// `;`, `,` or `)`, spaces dropped (optional_query_parameters.md).
    fn literal(&mut self) -> Result<String, QueryError> {
        self.skip_spaces();
        if self.s.get(self.pos) == Some(&b'"') {
            self.pos += 1;
            let mut out = String::new();
            loop {
                let Some(rest) = self.src.get(self.pos..) else {
                    return self.error();
                };
                let Some(q) = rest.find('"') else {
                    return self.error();
                };
                out.push_str(&rest[..q]);
                self.pos += q + 1;
                if self.s.get(self.pos) == Some(&b'"') {
                    out.push('"');
                    self.pos += 1;
                } else {
                    return Ok(out);
                }
            }
        }
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|b| !matches!(b, b';' | b',' | b')' | b'('))
        {
            self.pos += 1;
        }
        let raw: String = self.src[start..self.pos]
            .chars()
            .filter(|c| *c != ' ')
            .collect();
        if raw.is_empty() {
            return self.error();
        }
        Ok(raw)
    }
}

/// A parsed query string.
#[derive(Debug)]
struct Params {
    typ: Type,
    entities: bool,
    page_size: Option<usize>,
    page: usize,
    sort: Option<(&'static str, bool)>,
    filter: Option<Expr>,
}

/// Decodes one query parameter: `+` is a space in a query string, then `%XX`.
fn decode(s: &str) -> String {
    percent_decode(&s.replace('+', " "))
}

/// The query's `key=value` pairs, decoded; keys as sent.
fn pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|kv| !kv.is_empty()).map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k), decode(v))
    })
}

/// A positive page number or size.
fn positive(key: &str, v: &str) -> Result<usize, QueryError> {
    match v.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => bad(format!(
            "The value [{v}] of [{key}] is not valid: pass a number greater than 0."
        )),
    }
}

fn parse(query: &str) -> Result<Params, QueryError> {
    let get = |key: &str| {
        pairs(query)
            .filter(|(k, _)| k.eq_ignore_ascii_case(key))
            .last()
            .map(|(_, v)| v)
    };
    let Some(type_name) = get("type") else {
        return bad("The query has no [type] parameter (query_type.md: it is required).".into());
    };
    let typ = Type::parse(type_name.trim())?;
    let entities = match get("format").as_deref().map(str::to_ascii_lowercase) {
        None => false,
        Some(f) if f == "references" || f == "refs" || f == "reference" => false,
        Some(f) if f == "entities" || f == "entity" => true,
        Some(f) => {
            return bad(format!(
                "Format [{f}] is not supported: use Entities or References."
            ))
        }
    };
    let page_size = get("pageSize")
        .map(|v| positive("pageSize", &v))
        .transpose()?;
    let page = get("page").map(|v| positive("page", &v)).transpose()?;
    let sort = match (get("sortAsc"), get("sortDesc")) {
        (Some(_), Some(_)) => return bad("Pass either sortAsc or sortDesc, not both.".into()),
        (Some(f), None) => Some((typ.field(f.trim())?.0, false)),
        (None, Some(f)) => Some((typ.field(f.trim())?.0, true)),
        (None, None) => None,
    };
    let filter = match get("filter") {
        Some(f) if !f.trim().is_empty() => Some(FilterParser::parse(typ, &f)?),
        _ => None,
    };
    Ok(Params {
        typ,
        entities,
        page_size,
        page: page.unwrap_or(1),
        sort,
        filter,
    })
}

/// The query string with `page` set to `n` (in place when present, else last),
/// everything else as the client sent it.
fn with_page(query: &str, n: usize) -> String {
    let mut found = false;
    let mut parts: Vec<String> = Vec::new();
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let key = kv.split_once('=').map_or(kv, |(k, _)| k);
        if !decode(key).eq_ignore_ascii_case("page") {
            parts.push(kv.to_owned());
        } else if !found {
            found = true;
            parts.push(format!("page={n}"));
        }
        // Further `page` pairs are dropped: the link names one page.
    }
    if !found {
        parts.push(format!("page={n}"));
    }
    parts.join("&")
}

/// `GET /api/query?…`: a `QueryResult` (sample 07, RestAPI.xsd `QueryResultType`).
/// `tasks` are the calling session's, the only ones a `Task` query sees.
pub(crate) fn answer(
    base: &str,
    data: &Data,
    tasks: &[Task],
    query: Option<&str>,
) -> Result<Document, QueryError> {
    let query = query.unwrap_or("");
    let p = parse(query)?;
    let src = Source { data, tasks };
    let mut items: Vec<Item> = match p.typ {
        Type::RestorePoint => (0..data.points.len()).map(Item::Point).collect(),
        Type::VmRestorePoint => data
            .points
            .iter()
            .enumerate()
            .flat_map(|(i, rp)| (0..rp.vms.len()).map(move |k| Item::Vm(i, k)))
            .collect(),
        Type::BackupJobSession => (0..data.sessions.len()).map(Item::Session).collect(),
        Type::Job => (0..data.jobs.len()).map(Item::Job).collect(),
        Type::Task => (0..tasks.len()).map(Item::Task).collect(),
    };
    if let Some(f) = &p.filter {
        items.retain(|&it| f.matches(&src, it));
    }
    match p.sort {
        Some((field, false)) => items.sort_by_cached_key(|&it| value(&src, it, field)),
        Some((field, true)) => items.sort_by_cached_key(|&it| Reverse(value(&src, it, field))),
        None => {}
    }

    let total = items.len();
    let (page_size, pages) = match p.page_size {
        Some(size) => (size, total.div_ceil(size).max(1)),
        None => (total, 1),
    };
    let skip = (p.page - 1).saturating_mul(page_size);

    let elements: Vec<Element> = items
        .into_iter()
        .skip(skip)
        .take(page_size)
        .map(|it| match it {
            Item::Point(i) => resources::point_item(base, data, i, p.entities),
            Item::Vm(i, k) => resources::vm_item(base, data, i, k, p.entities),
            Item::Session(i) => jobs::session_item(base, data, &data.sessions[i], p.entities),
            Item::Job(j) => jobs::job_item(base, data, j, p.entities),
            Item::Task(i) => jobs::task_element(base, data, &tasks[i]),
        })
        .collect();

    let root = Element::new("QueryResult");
    let root = match p.typ.result_member() {
        Ok(filled) if p.entities => root
            .absent("Refs")
            .child(one_filled("Entities", &ENTITY_MEMBERS, filled, elements))
            .absent("Resources"),
        Ok(_) => root
            .wrapped_list("Refs", "Refs", elements)
            .absent("Entities")
            .absent("Resources"),
        Err(filled) => root.absent("Refs").absent("Entities").child(one_filled(
            "Resources",
            &RESOURCE_MEMBERS,
            filled,
            elements,
        )),
    };
    let href = |n: usize| format!("{base}/api/query?{}", with_page(query, n));
    let mut links = vec![Link::untyped("First", href(1))];
    if p.page > 1 {
        links.push(Link::untyped("Previous", href(p.page - 1)));
    }
    if p.page < pages {
        links.push(Link::untyped("Next", href(p.page + 1)));
    }
    links.push(Link::untyped("Last", href(pages)));
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    // Attribute order of sample 07.
    let paging = Element::new("PagingInfo")
        .attr_int("PagesCount", count(pages))
        .attr_int("PageSize", count(page_size))
        .attr_int("PageNum", count(p.page))
        .links(links);
    let root = root.absent("Links").child(paging);
    Ok(Document::new(root, RootStyle::Plain))
}

/// `Entities` or `Resources` of a query result: every member absent (JSON
/// `null`) but `filled`, a wrapped list of `items`.
fn one_filled(
    name: &'static str,
    members: &[&'static str],
    filled: &str,
    mut items: Vec<Element>,
) -> Element {
    members.iter().fold(Element::new(name), |el, &member| {
        if member == filled {
            el.wrapped_list(member, member, std::mem::take(&mut items))
        } else {
            el.absent(member)
        }
    })
}

/// Decodes `%XX` escapes in a path segment or query parameter (invalid escapes
/// are kept as written).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| char::from(b).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> Data {
        Data::generate(5, 120)
    }

    #[test]
    fn parses_parameters() {
        let p =
            parse("type=vmrestorepoint&format=entities&pageSize=3&page=2&sortDesc=creationtime")
                .unwrap();
        assert_eq!(p.typ, Type::VmRestorePoint);
        assert!(p.entities);
        assert_eq!((p.page_size, p.page), (Some(3), 2));
        assert_eq!(p.sort, Some(("CreationTime", true)));
        assert!(matches!(parse("type=Nope"), Err(QueryError::Bad(_))));
        assert!(matches!(
            parse("type=BackupServer"),
            Err(QueryError::NotSimulated(_))
        ));
        assert!(matches!(parse("format=Entities"), Err(QueryError::Bad(_))));
        for q in [
            "type=Job&pageSize=0",
            "type=Job&pageSize=x",
            "type=Job&page=-1",
            "type=Job&format=Full",
            "type=Job&sortAsc=Colour",
            "type=Job&sortAsc=Name&sortDesc=Name",
            "type=Job&filter=Name==",
            "type=Job&filter=Colour==red",
            "type=Job&filter=(Name==x",
            "type=Job&filter=ScheduleEnabled==maybe",
            "type=Job&filter=NextRun>tomorrow",
        ] {
            assert!(matches!(parse(q), Err(QueryError::Bad(_))), "{q}");
        }
    }

    #[test]
    fn filters_like_the_docs() {
        let d = data();
        let src = Source {
            data: &d,
            tasks: &[],
        };
        let count = |q: &str| {
            let p = parse(q).unwrap();
            let f = p.filter.unwrap();
            match p.typ {
                Type::Job => (0..d.jobs.len())
                    .filter(|&j| f.matches(&src, Item::Job(j)))
                    .count(),
                Type::BackupJobSession => (0..d.sessions.len())
                    .filter(|&i| f.matches(&src, Item::Session(i)))
                    .count(),
                Type::RestorePoint | Type::VmRestorePoint | Type::Task => unreachable!(),
            }
        };
        assert_eq!(count("type=job&filter=name==\"Backup Job 3\""), 1);
        assert_eq!(count("type=job&filter=name==%22backup%20job%203%22"), 1);
        assert_eq!(
            count("type=job&filter=jobtype==backup;platform==vmware"),
            d.jobs.len()
        );
        assert_eq!(count("type=job&filter=jobtype==replica"), 0);
        let enabled = d.jobs.iter().filter(|j| j.schedule_enabled).count();
        assert_eq!(count("type=job&filter=ScheduleEnabled==true"), enabled);
        assert_eq!(
            count("type=job&filter=(ScheduleEnabled==true),(ScheduleEnabled==false)"),
            d.jobs.len()
        );
        let failed = d
            .sessions
            .iter()
            .filter(|s| s.result == SessionResult::Failed)
            .count();
        assert_eq!(count("type=BackupJobSession&filter=Result==Failed"), failed);
        assert_eq!(
            count("type=BackupJobSession&filter=Result>Success"),
            d.sessions.iter().filter(|s| s.result.index() > 0).count()
        );
        let job = d.jobs[2].id;
        assert_eq!(
            count(&format!(
                "type=BackupJobSession&filter=JobUid==urn:veeam:Job:{job}"
            )),
            crate::data::SESSIONS_PER_JOB
        );
        let after = count("type=BackupJobSession&filter=CreationTime>=\"2025-07-01T00:00:00Z\"");
        let before = count("type=BackupJobSession&filter=CreationTime<2025-07-01T00:00:00Z");
        assert_eq!(after + before, d.sessions.len());
    }

    #[test]
    fn page_links_keep_the_query() {
        assert_eq!(
            with_page("type=Job&page=1&pageSize=2", 3),
            "type=Job&page=3&pageSize=2"
        );
        assert_eq!(
            with_page("type=Job&pageSize=2", 2),
            "type=Job&pageSize=2&page=2"
        );
        assert_eq!(with_page("type=Job&Page=4&page=5", 1), "type=Job&page=1");
        assert_eq!(decode("a%3D%3Db+c%zz"), "a==b c%zz");
    }
}
