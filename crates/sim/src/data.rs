//! The generated backup estate: backup servers, backup jobs, restore points and the
//! VM restore points inside them.
//!
//! Everything is a pure function of `(seed, index)`: the same seed gives the same
//! ids, names and times on every run and every machine, so tests can name a restore
//! point by its index ([`restore_point_uuid`], [`vm_count`]) without asking the
//! simulator. Ids are version-4 UUIDs drawn from a splitmix64 hash.
//!
//! Shape of the estate:
//! - [`SERVERS`] backup servers, each with its own vCenter (for `HierarchyObjRef`);
//! - [`JOBS`] backup jobs ("Backup Job 7"), spread over the servers, each protecting
//!   eight VMs with fixed names (`web017`, `db203`, … and one `r&d…` so that names
//!   needing XML escaping occur);
//! - restore points, each from one job, created at some moment of 2025, holding the
//!   job's first `vm_count` VMs (1 to 8), one backup file, full or incremental;
//! - [`SESSIONS_PER_JOB`] backup job sessions per job, its most recent runs: a
//!   successful run (Success or Warning) made the job's next newest restore point
//!   (and links to it), a failed run made none and the run after it is its retry.

use std::collections::HashMap;

use uuid::Uuid;

use super::time::Civil;

/// Backup servers in the estate.
pub(crate) const SERVERS: usize = 3;
/// Backup jobs in the estate.
pub(crate) const JOBS: usize = 24;
/// VMs per job; a restore point holds 1 to this many of them.
pub(crate) const VMS_PER_JOB: usize = 8;
/// Backup job sessions per job (its most recent runs).
pub(crate) const SESSIONS_PER_JOB: usize = 10;

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch.
const YEAR_2025_MS: i64 = 1_735_689_600_000;
/// Length of 2025 in milliseconds.
const YEAR_MS: u64 = 365 * 86_400_000;
/// One day in milliseconds.
pub(crate) const DAY_MS: i64 = 86_400_000;
/// One minute in milliseconds.
const MINUTE_MS: i64 = 60_000;
/// One GiB in bytes.
const GIB: i64 = 1 << 30;

/// VM name prefixes; `r&d` makes names that must be escaped in XML.
const PREFIXES: [&str; 12] = [
    "web", "db", "app", "file", "mail", "sql", "dc", "ubuntu", "oracle", "exch", "proxy", "r&d",
];

/// Domain tags keep the hash streams of different kinds of ids apart.
mod tag {
    pub const RESTORE_POINT: u64 = 0x0001;
    pub const VM_POINT: u64 = 0x0002;
    pub const SERVER: u64 = 0x0003;
    pub const VCENTER: u64 = 0x0004;
    pub const JOB: u64 = 0x0005;
    pub const JOB_VM: u64 = 0x0006;
    pub const BACKUP_FILE: u64 = 0x0007;
    pub const DETAILS: u64 = 0x0008;
    pub const VM_COUNT: u64 = 0x0009;
    pub const SESSION: u64 = 0x000A;
    pub const SESSION_DETAILS: u64 = 0x000B;
    pub const JOB_DETAILS: u64 = 0x000C;
    pub const JOB_OBJECT: u64 = 0x000D;
    pub const VM_SIZE: u64 = 0x000E;
    pub const REPORT_LINK: u64 = 0x000F;
    pub const REPOSITORY: u64 = 0x0010;
}

/// splitmix64's finaliser: a fast, well-mixed 64-bit hash step.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a seed, a domain tag and two indexes.
fn hash(seed: u64, tag: u64, a: u64, b: u64) -> u64 {
    splitmix64(
        seed ^ splitmix64(tag.wrapping_mul(0x1000_0000_01B3) ^ splitmix64(a ^ splitmix64(b))),
    )
}

/// A version-4 UUID drawn from the hash of `(seed, tag, a, b)`.
fn uuid(seed: u64, tag: u64, a: u64, b: u64) -> Uuid {
    let hi = hash(seed, tag, a, b);
    let lo = splitmix64(hi ^ 0xA5A5_A5A5_A5A5_A5A5);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&hi.to_be_bytes());
    bytes[8..].copy_from_slice(&lo.to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// The id of restore point `index` under `seed`. Defined for every index, also
/// past the number generated: those ids are well-formed but unknown to the sim.
pub(crate) fn restore_point_uuid(seed: u64, index: usize) -> Uuid {
    uuid(seed, tag::RESTORE_POINT, index as u64, 0)
}

/// The id of job `index` under `seed`; past [`JOBS`] an id the sim does not know.
pub(crate) fn job_uuid(seed: u64, index: usize) -> Uuid {
    uuid(seed, tag::JOB, index as u64, 0)
}

/// The id of backup job session `index` (`job * SESSIONS_PER_JOB + run`, runs
/// oldest first); past the last session an id the sim does not know.
pub(crate) fn session_uuid(seed: u64, index: usize) -> Uuid {
    uuid(seed, tag::SESSION, index as u64, 0)
}

/// The id of the `k`-th object (VM) in job `job` (`ObjectInJobId`).
pub(crate) fn object_in_job_uuid(seed: u64, job: usize, k: usize) -> Uuid {
    uuid(seed, tag::JOB_OBJECT, job as u64, k as u64)
}

/// A fixed id per seed and `n`, for the report definitions EM links its summary
/// reports to (`Workspace/ViewReport.aspx?definition=…`).
pub(crate) fn report_definition_uuid(seed: u64, n: u64) -> Uuid {
    uuid(seed, tag::REPORT_LINK, n, 0)
}

/// How many VMs restore point `index` holds: 1 to [`VMS_PER_JOB`].
pub(crate) fn vm_count(seed: u64, index: usize) -> usize {
    1 + (hash(seed, tag::VM_COUNT, index as u64, 0) % VMS_PER_JOB as u64) as usize
}

/// A backup server connected to EM.
#[derive(Debug)]
pub(crate) struct BackupServer {
    pub id: Uuid,
    pub name: String,
    /// The vCenter whose VMs this server backs up (`urn:VMware:Vm:{vcenter}.vm-N`).
    pub vcenter: Uuid,
}

/// A backup job and the backup (chain) it writes; the backup's id is `id`.
#[derive(Debug)]
pub(crate) struct Job {
    pub id: Uuid,
    pub name: String,
    pub server: usize,
    pub vms: Vec<Vm>,
    /// Whether its daily schedule is enabled (`ScheduleEnabled`); one job in
    /// six has it disabled.
    pub schedule_enabled: bool,
    /// Minutes after midnight UTC of the daily run (`OptionsDaily/Time`).
    pub run_minute: u32,
    /// When it was created (its `Description` says so), in 2024.
    pub created_ms: i64,
}

/// A VM a job protects.
#[derive(Debug)]
pub(crate) struct Vm {
    pub name: String,
    /// vSphere managed object number (`vm-85541`).
    pub moref: u32,
    /// Provisioned size in GiB (20 to 500), for the reports.
    pub size_gib: u32,
}

/// The result of a backup job session, in the order the query service compares
/// them (query_comparison.md: Success < Warning < Failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SessionResult {
    Success,
    Warning,
    Failed,
}

impl SessionResult {
    pub const NAMES: [&'static str; 3] = ["Success", "Warning", "Failed"];

    pub fn name(self) -> &'static str {
        Self::NAMES[self.index()]
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// One run of a backup job (a backup job session). Every generated session has
/// ended (`State` Stopped).
#[derive(Debug)]
pub(crate) struct Session {
    pub id: Uuid,
    pub job: usize,
    /// `CreationTimeUTC`, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// `EndTimeUTC`.
    pub end_ms: i64,
    pub result: SessionResult,
    /// The run retries the failed run before it.
    pub is_retry: bool,
    /// Index of the restore point the run made; failed runs make none.
    pub point: Option<usize>,
}

/// One restore point (a job run).
#[derive(Debug)]
pub(crate) struct RestorePoint {
    pub id: Uuid,
    pub job: usize,
    /// `BackupDateUTC`, milliseconds since the Unix epoch.
    pub backup_ms: i64,
    /// A full (`.vbk`) or incremental (`.vib`) point.
    pub full: bool,
    pub file_id: Uuid,
    /// Four hex digits EM appends to backup file names.
    pub file_tag: u16,
    pub vms: Vec<VmPoint>,
}

/// One VM restore point inside a restore point.
#[derive(Debug)]
pub(crate) struct VmPoint {
    pub id: Uuid,
    /// Index into the job's `vms`.
    pub slot: usize,
    /// `CreationTimeUTC`, milliseconds since the Unix epoch.
    pub created_ms: i64,
}

/// The whole estate plus the id indexes the router looks things up in.
#[derive(Debug)]
pub(crate) struct Data {
    /// The seed everything was drawn from (sizes are drawn when asked for).
    pub seed: u64,
    pub servers: Vec<BackupServer>,
    pub jobs: Vec<Job>,
    pub points: Vec<RestorePoint>,
    /// `SESSIONS_PER_JOB` per job, job by job, each job's oldest first.
    pub sessions: Vec<Session>,
    rp_by_id: HashMap<Uuid, usize>,
    vm_by_id: HashMap<Uuid, (usize, usize)>,
    job_by_id: HashMap<Uuid, usize>,
    session_by_id: HashMap<Uuid, usize>,
}

impl Data {
    /// Generates `count` restore points for `seed` (5000 take a few milliseconds).
    pub fn generate(seed: u64, count: usize) -> Data {
        let servers = (0..SERVERS)
            .map(|s| BackupServer {
                id: uuid(seed, tag::SERVER, s as u64, 0),
                name: format!("vbr{:02}.sim.local", s + 1),
                vcenter: uuid(seed, tag::VCENTER, s as u64, 0),
            })
            .collect();
        let jobs = (0..JOBS)
            .map(|j| {
                let h = hash(seed, tag::JOB_DETAILS, j as u64, 0);
                Job {
                    id: job_uuid(seed, j),
                    name: format!("Backup Job {}", j + 1),
                    server: j % SERVERS,
                    schedule_enabled: h % 6 != 0,
                    // 18:00 to 23:30, on the half hour.
                    run_minute: 18 * 60 + 30 * ((h >> 8) % 12) as u32,
                    // Some day of December 2024, in working hours.
                    created_ms: YEAR_2025_MS - 31 * DAY_MS
                        + ((h >> 16) % 30) as i64 * DAY_MS
                        + (8 * 60 + ((h >> 24) % 600) as i64) * MINUTE_MS,
                    vms: (0..VMS_PER_JOB)
                        .map(|k| {
                            let h = hash(seed, tag::JOB_VM, j as u64, k as u64);
                            // Numbers are unique across the estate, so names are too.
                            let number = j * VMS_PER_JOB + k;
                            Vm {
                                name: format!(
                                    "{}{:03}",
                                    PREFIXES[(h % PREFIXES.len() as u64) as usize],
                                    number
                                ),
                                moref: 1000 + (h >> 32) as u32 % 99_000,
                                size_gib: 20 + ((h >> 16) % 481) as u32,
                            }
                        })
                        .collect(),
                }
            })
            .collect::<Vec<_>>();
        let mut points = Vec::with_capacity(count);
        let mut rp_by_id = HashMap::with_capacity(count);
        let mut vm_by_id = HashMap::with_capacity(count * (VMS_PER_JOB + 1) / 2);
        for i in 0..count {
            let h = hash(seed, tag::DETAILS, i as u64, 0);
            let backup_ms = YEAR_2025_MS + (h % YEAR_MS) as i64;
            let rp = point(seed, i, (splitmix64(h) % JOBS as u64) as usize, backup_ms);
            index_point(&mut rp_by_id, &mut vm_by_id, i, &rp);
            points.push(rp);
        }
        let sessions = generate_sessions(seed, &points);
        let job_by_id = jobs
            .iter()
            .enumerate()
            .map(|(j, job)| (job.id, j))
            .collect();
        let session_by_id = sessions
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        Data {
            seed,
            servers,
            jobs,
            points,
            sessions,
            rp_by_id,
            vm_by_id,
            job_by_id,
            session_by_id,
        }
    }

    /// Job `job` finished a backup just now (`now_ms`): a new restore point,
    /// numbered after the others (its id is [`restore_point_uuid`] of its
    /// index), its VMs done one after another up to `now_ms`. EM shows a
    /// point once its job has finished, so its `CreationTime` (when the
    /// backup began) is already minutes in the past when it appears.
    pub fn add_point(&mut self, job: usize, now_ms: i64) -> Uuid {
        let i = self.points.len();
        let job = job % self.jobs.len().max(1);
        let mut rp = point(self.seed, i, job, now_ms);
        // Shift it back so that its last VM finished now.
        let took = rp.vms.last().map_or(0, |v| v.created_ms - now_ms);
        rp.backup_ms -= took;
        for vm in &mut rp.vms {
            vm.created_ms -= took;
        }
        index_point(&mut self.rp_by_id, &mut self.vm_by_id, i, &rp);
        let id = rp.id;
        self.points.push(rp);
        id
    }

    /// The job with this id, by index.
    pub fn job_index(&self, id: &Uuid) -> Option<usize> {
        self.job_by_id.get(id).copied()
    }

    /// The backup job session with this id.
    pub fn session(&self, id: &Uuid) -> Option<&Session> {
        self.session_by_id.get(id).map(|&i| &self.sessions[i])
    }

    /// A job's sessions, oldest first.
    pub fn job_sessions(&self, job: usize) -> &[Session] {
        let start = (job * SESSIONS_PER_JOB).min(self.sessions.len());
        let end = (start + SESSIONS_PER_JOB).min(self.sessions.len());
        &self.sessions[start..end]
    }

    /// `NextRun` of a job: its daily run time on the day after its last run;
    /// `None` when its schedule is disabled (get_jobs_id.md: scheduled jobs only).
    pub fn next_run_ms(&self, job: usize) -> Option<i64> {
        let j = &self.jobs[job];
        if !j.schedule_enabled {
            return None;
        }
        let last = self
            .job_sessions(job)
            .last()
            .map_or(YEAR_2025_MS, |s| s.start_ms);
        Some(last.div_euclid(DAY_MS) * DAY_MS + DAY_MS + i64::from(j.run_minute) * MINUTE_MS)
    }

    /// `Backup Job 3@2025-10-20 20:00:02`: a session's name (backupsessions_id.md:
    /// `Fileserver Backup@2014-10-19 05:22:52`).
    pub fn session_name(&self, s: &Session) -> String {
        format!(
            "{}@{}",
            self.jobs[s.job].name,
            Civil::from_unix_ms(s.start_ms).plain()
        )
    }

    /// Size in bytes of one VM's data in a restore point: 40 to 70 % of the VM's
    /// size in a full point, 1 to 8 % in an incremental one.
    pub fn vm_point_bytes(&self, rp_index: usize, k: usize) -> i64 {
        let rp = &self.points[rp_index];
        let size = i64::from(self.jobs[rp.job].vms[rp.vms[k].slot].size_gib) * GIB;
        let h = hash(self.seed, tag::VM_SIZE, rp_index as u64, k as u64);
        let percent = if rp.full { 40 + h % 31 } else { 1 + h % 8 };
        size / 100 * percent as i64
    }

    /// Free space of a backup server's repository: 2 to 16 TiB.
    pub fn repository_free_bytes(&self, server: usize) -> i64 {
        let h = hash(self.seed, tag::REPOSITORY, server as u64, 0);
        (2 + (h % 15) as i64) * 1024 * GIB
    }

    /// The restore point with this id.
    pub fn restore_point(&self, id: &Uuid) -> Option<&RestorePoint> {
        self.rp_by_id.get(id).map(|&i| &self.points[i])
    }

    /// The VM restore point with this id, with its restore point.
    pub fn vm_point(&self, id: &Uuid) -> Option<(&RestorePoint, &VmPoint)> {
        self.vm_by_id.get(id).map(|&(i, k)| {
            let rp = &self.points[i];
            (rp, &rp.vms[k])
        })
    }

    pub fn job(&self, rp: &RestorePoint) -> &Job {
        &self.jobs[rp.job]
    }

    pub fn server(&self, rp: &RestorePoint) -> &BackupServer {
        &self.servers[self.job(rp).server]
    }

    /// `Oct 20 2025  8:00PM`: a restore point's name.
    pub fn rp_name(&self, rp: &RestorePoint) -> String {
        Civil::from_unix_ms(rp.backup_ms).legacy()
    }

    /// `Backup Job 3D2025-10-20T200020_159E.vib`: the backup file's name (sample 04).
    pub fn file_name(&self, rp: &RestorePoint) -> String {
        format!(
            "{}D{}_{:04X}.{}",
            self.job(rp).name,
            Civil::from_unix_ms(rp.backup_ms).compact(),
            rp.file_tag,
            if rp.full { "vbk" } else { "vib" }
        )
    }

    pub fn vm<'a>(&'a self, rp: &RestorePoint, vm: &VmPoint) -> &'a Vm {
        &self.job(rp).vms[vm.slot]
    }

    /// `ubuntu88@2025-10-20 20:04:07`: a VM restore point's name.
    pub fn vm_point_name(&self, rp: &RestorePoint, vm: &VmPoint) -> String {
        format!(
            "{}@{}",
            self.vm(rp, vm).name,
            Civil::from_unix_ms(vm.created_ms).plain()
        )
    }

    /// `urn:VMware:Vm:{vcenter}.vm-85541` (constructing_hierarchyobjreftype.md).
    pub fn hierarchy_ref(&self, rp: &RestorePoint, vm: &VmPoint) -> String {
        format!(
            "urn:VMware:Vm:{}.vm-{}",
            self.server(rp).vcenter,
            self.vm(rp, vm).moref
        )
    }
}

/// Restore point `i` of job `job`, its backup begun at `backup_ms`: a pure
/// function of (seed, index) but for the job and the time, which a point
/// made while the simulator runs chooses.
fn point(seed: u64, i: usize, job: usize, backup_ms: i64) -> RestorePoint {
    let h2 = splitmix64(hash(seed, tag::DETAILS, i as u64, 0));
    let n = vm_count(seed, i);
    let mut at = backup_ms;
    let vms = (0..n)
        .map(|k| {
            // Each VM finishes 20 s to 4 min after the one before it.
            at += 20_000 + (hash(seed, tag::VM_POINT, i as u64, 100 + k as u64) % 220_000) as i64;
            VmPoint {
                id: uuid(seed, tag::VM_POINT, i as u64, k as u64),
                slot: k,
                created_ms: at,
            }
        })
        .collect::<Vec<_>>();
    RestorePoint {
        id: restore_point_uuid(seed, i),
        job,
        backup_ms,
        full: (h2 >> 20) % 7 == 0,
        file_id: uuid(seed, tag::BACKUP_FILE, i as u64, 0),
        file_tag: (h2 >> 40) as u16,
        vms,
    }
}

/// Adds point `i` to the id indexes.
fn index_point(
    rp_by_id: &mut HashMap<Uuid, usize>,
    vm_by_id: &mut HashMap<Uuid, (usize, usize)>,
    i: usize,
    rp: &RestorePoint,
) {
    rp_by_id.insert(rp.id, i);
    for (k, vm) in rp.vms.iter().enumerate() {
        vm_by_id.insert(vm.id, (i, k));
    }
}

/// A job's most recent runs, walking back from its newest restore point: a run
/// succeeds (7 in 8) and made the next older restore point, or fails (and always
/// when no point is left) without one, half an hour to an hour before the run
/// after it, which is then its retry.
fn generate_sessions(seed: u64, points: &[RestorePoint]) -> Vec<Session> {
    let mut by_job: Vec<Vec<usize>> = vec![Vec::new(); JOBS];
    for (i, rp) in points.iter().enumerate() {
        by_job[rp.job].push(i);
    }
    let mut sessions = Vec::with_capacity(JOBS * SESSIONS_PER_JOB);
    for (j, mut pts) in by_job.into_iter().enumerate() {
        pts.sort_unstable_by_key(|&i| points[i].backup_ms);
        // Newest first while walking back.
        let mut runs: Vec<Session> = Vec::with_capacity(SESSIONS_PER_JOB);
        for r in 0..SESSIONS_PER_JOB {
            let h = hash(seed, tag::SESSION_DETAILS, j as u64, r as u64);
            let point = if h % 8 == 0 { None } else { pts.pop() };
            let run = match point {
                Some(i) => {
                    let rp = &points[i];
                    let last_vm = rp.vms.last().map_or(rp.backup_ms, |v| v.created_ms);
                    Session {
                        id: Uuid::nil(),
                        job: j,
                        // Started 10 s to 1 min before the point's backup time.
                        start_ms: rp.backup_ms - 10_000 - ((h >> 8) % 50_000) as i64,
                        // Ended 5 s to 1 min after its last VM.
                        end_ms: last_vm + 5_000 + ((h >> 24) % 55_000) as i64,
                        result: if (h >> 40) % 6 == 0 {
                            SessionResult::Warning
                        } else {
                            SessionResult::Success
                        },
                        is_retry: false,
                        point: Some(i),
                    }
                }
                None => {
                    let start_ms = match runs.last_mut() {
                        Some(newer) => {
                            newer.is_retry = true;
                            newer.start_ms - 30 * MINUTE_MS - ((h >> 8) % 30) as i64 * MINUTE_MS
                        }
                        // The newest run: a day after the newest point.
                        None => pts.last().map_or(YEAR_2025_MS + YEAR_MS as i64, |&i| {
                            points[i].backup_ms + DAY_MS
                        }),
                    };
                    Session {
                        id: Uuid::nil(),
                        job: j,
                        start_ms,
                        end_ms: start_ms + MINUTE_MS + ((h >> 24) % 600_000) as i64,
                        result: SessionResult::Failed,
                        is_retry: false,
                        point: None,
                    }
                }
            };
            runs.push(run);
        }
        runs.sort_by_key(|s| s.start_ms);
        for (k, mut run) in runs.into_iter().enumerate() {
            run.id = session_uuid(seed, j * SESSIONS_PER_JOB + k);
            sessions.push(run);
        }
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_indexed() {
        let a = Data::generate(7, 300);
        let b = Data::generate(7, 300);
        let c = Data::generate(8, 300);
        assert_eq!(a.points[42].id, b.points[42].id);
        assert_ne!(a.points[42].id, c.points[42].id);
        assert_eq!(a.points[42].id, restore_point_uuid(7, 42));
        for (i, rp) in a.points.iter().enumerate() {
            assert_eq!(rp.vms.len(), vm_count(7, i));
            assert!((1..=VMS_PER_JOB).contains(&rp.vms.len()));
            assert_eq!(a.restore_point(&rp.id).map(|p| p.id), Some(rp.id));
            for vm in &rp.vms {
                let (p, v) = a.vm_point(&vm.id).unwrap();
                assert_eq!((p.id, v.id), (rp.id, vm.id));
                assert!(vm.created_ms > rp.backup_ms);
            }
            let year = Civil::from_unix_ms(rp.backup_ms).year;
            assert_eq!(year, 2025);
        }
        assert!(a.restore_point(&restore_point_uuid(7, 300)).is_none());
        assert_eq!(restore_point_uuid(7, 1).get_version_num(), 4);
    }

    #[test]
    fn sessions_follow_the_restore_points() {
        for count in [0, 30, 2000] {
            let d = Data::generate(9, count);
            assert_eq!(d.sessions.len(), JOBS * SESSIONS_PER_JOB);
            let mut linked = std::collections::HashSet::new();
            for j in 0..JOBS {
                let runs = d.job_sessions(j);
                assert_eq!(runs.len(), SESSIONS_PER_JOB);
                for (k, s) in runs.iter().enumerate() {
                    assert_eq!(s.job, j);
                    assert_eq!(s.id, session_uuid(9, j * SESSIONS_PER_JOB + k));
                    assert_eq!(d.session(&s.id).map(|x| x.id), Some(s.id));
                    assert!(s.end_ms > s.start_ms);
                    if k > 0 {
                        assert!(runs[k - 1].start_ms <= s.start_ms, "oldest first");
                    }
                    match s.point {
                        Some(i) => {
                            let rp = &d.points[i];
                            assert_eq!(rp.job, j);
                            assert!(s.start_ms < rp.backup_ms);
                            assert!(s.end_ms > rp.vms.last().unwrap().created_ms);
                            assert_ne!(s.result, SessionResult::Failed);
                            assert!(linked.insert(i), "one run per point");
                        }
                        None => assert_eq!(s.result, SessionResult::Failed),
                    }
                }
                // The newest runs made the newest points of the job.
                let newest = d
                    .points
                    .iter()
                    .enumerate()
                    .filter(|(_, rp)| rp.job == j)
                    .max_by_key(|(_, rp)| rp.backup_ms)
                    .map(|(i, _)| i);
                let newest_linked = runs.iter().rev().find_map(|s| s.point);
                assert_eq!(newest_linked, newest);
                assert_eq!(d.job_index(&d.jobs[j].id), Some(j));
            }
            if count == 0 {
                assert!(d.sessions.iter().all(|s| s.result == SessionResult::Failed));
            } else {
                assert!(d
                    .sessions
                    .iter()
                    .any(|s| s.result == SessionResult::Success));
                assert!(d.sessions.iter().any(|s| s.is_retry));
            }
        }
        assert!(Data::generate(9, 10)
            .session(&session_uuid(9, 240))
            .is_none());
    }

    #[test]
    fn five_thousand_points_have_distinct_vm_names() {
        // No timing here: a busy machine would fail a timed test (speed
        // belongs in benches/).
        let d = Data::generate(1, 5000);
        let names: std::collections::HashSet<_> = d
            .jobs
            .iter()
            .flat_map(|j| j.vms.iter().map(|v| v.name.clone()))
            .collect();
        assert_eq!(names.len(), JOBS * VMS_PER_JOB);
    }
}
