//! The summary reports (reports.md, reports_summary*.md): their figures, drawn
//! from the generated estate when asked for, and their documents.
//!
//! The docs show only the root element of each report; the members, their order
//! and their types come from RestAPI.xsd (`OverviewReportFrameType` and its
//! siblings). As in the docs' examples, the roots carry no `Href` or `Type`
//! (declared by `ResourceType`, so `null` in JSON) and no links but the summary's.
//! json-facts.md: reports are flat objects of numbers.
//!
//! The figures are a pure function of the data: nothing runs, so `RunningJobs`
//! is 0, and there are no replicas, so every replica figure is 0.

use super::data::{self, Data, SessionResult, DAY_MS, JOBS, SERVERS};
use super::model::{Document, Element, Link, RootStyle};
use super::time::Civil;

/// The days `processed_vms` covers, ending with the day of the newest VM
/// restore point (the docs do not say how many; EM's dashboard shows a week).
const PROCESSED_DAYS: i64 = 7;

/// EM's capacity planning report, verbatim from reports_summary_repository.md.
const CAPACITY_PLANNING_LINK: &str =
    "Workspace/ViewReport.aspx?definition=62221565-102c-4ec8-851b-d61c03d972d1&ShowParams=1";

/// Which report a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Report {
    Overview,
    VmsOverview,
    JobStatistics,
    ProcessedVms,
    Repository,
}

/// The five reports below `/api/reports/summary` by path segment, in the order
/// reports_summary.md lists them. The job statistics are at `job_statistics`, as
/// the page's resource URL says (its method link says `statistics`, its example
/// `jobs_statistics`).
const REPORTS: [(&str, Report); 5] = [
    ("overview", Report::Overview),
    ("vms_overview", Report::VmsOverview),
    ("job_statistics", Report::JobStatistics),
    ("processed_vms", Report::ProcessedVms),
    ("repository", Report::Repository),
];

impl Report {
    /// The report a path segment names (ignoring ASCII case, as EM's routes do).
    pub fn from_segment(segment: &str) -> Option<Report> {
        REPORTS
            .iter()
            .find(|(seg, _)| seg.eq_ignore_ascii_case(segment))
            .map(|(_, r)| *r)
    }
}

/// `GET /api/reports/summary`: root `SummaryReport` with a `Down` link of type
/// `ReportFrame` to each report (reports_summary.md,
/// mapping_link_types_to_xml_schema.md).
pub(crate) fn summary(base: &str) -> Document {
    let links = REPORTS
        .iter()
        .map(|(seg, _)| {
            Link::new(
                "Down",
                "ReportFrame",
                format!("{base}/api/reports/summary/{seg}"),
            )
        })
        .collect();
    let root = Element::new("SummaryReport")
        .links(links)
        .absent("Href")
        .absent("Type");
    Document::new(root, RootStyle::Plain)
}

/// One report's document.
pub(crate) fn report(data: &Data, which: Report) -> Document {
    let root = match which {
        Report::Overview => overview(data),
        Report::VmsOverview => vms_overview(data),
        Report::JobStatistics => job_statistics(data),
        Report::ProcessedVms => processed_vms(data),
        Report::Repository => repository(data),
    };
    Document::new(root.absent("Href").absent("Type"), RootStyle::Plain)
}

/// A report frame's root, without links (declared, so `null` in JSON).
fn frame(name: &'static str) -> Element {
    Element::new(name).absent("Links")
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Jobs whose schedule is enabled.
fn scheduled_jobs(data: &Data) -> i64 {
    count(data.jobs.iter().filter(|j| j.schedule_enabled).count())
}

/// Sessions by result: (success, warning, failed).
fn session_results(data: &Data) -> (i64, i64, i64) {
    let by = |r: SessionResult| count(data.sessions.iter().filter(|s| s.result == r).count());
    (
        by(SessionResult::Success),
        by(SessionResult::Warning),
        by(SessionResult::Failed),
    )
}

/// `OverviewReportFrame`. Each backup server is also its own proxy and
/// repository server. A VM's latest state is the result of its job's newest run.
fn overview(data: &Data) -> Element {
    let mut latest = [0i64; 3];
    for j in 0..JOBS.min(data.jobs.len()) {
        if let Some(s) = data.job_sessions(j).last() {
            latest[s.result.index()] += count(data.jobs[j].vms.len());
        }
    }
    let servers = count(SERVERS.min(data.servers.len()));
    frame("OverviewReportFrame")
        .text_int("BackupServers", servers)
        .text_int("ProxyServers", servers)
        .text_int("RepositoryServers", servers)
        .text_int("RunningJobs", 0)
        .text_int("ScheduledJobs", scheduled_jobs(data))
        // EM's own spelling (RestAPI.xsd, json-facts.md).
        .text_int("SuccessfulVmLastestStates", latest[0])
        .text_int("WarningVmLastestStates", latest[1])
        .text_int("FailedVmLastestStates", latest[2])
}

/// `Workspace/ViewReport.aspx?definition=…&ShowParams=1`, the form of the one
/// report link the docs show (reports_summary_repository.md), for report `n`.
fn report_link(data: &Data, n: u64) -> String {
    format!(
        "Workspace/ViewReport.aspx?definition={}&ShowParams=1",
        data::report_definition_uuid(data.seed, n)
    )
}

/// `VmsOverviewReportFrame`. `RestorePoints` counts VM restore points; a VM is
/// protected when some restore point holds it; `SuccessBackupPercents` is the
/// share of runs that made a restore point (Success or Warning).
fn vms_overview(data: &Data) -> Element {
    // A restore point holds its job's first n VMs, so a job's protected VMs are
    // the first max(n) of them.
    let mut protected = [0usize; JOBS];
    let (mut full, mut incremental, mut vm_points) = (0i64, 0i64, 0usize);
    for (i, rp) in data.points.iter().enumerate() {
        if let Some(p) = protected.get_mut(rp.job) {
            *p = (*p).max(rp.vms.len());
        }
        vm_points += rp.vms.len();
        let bytes: i64 = (0..rp.vms.len()).map(|k| data.vm_point_bytes(i, k)).sum();
        if rp.full {
            full += bytes;
        } else {
            incremental += bytes;
        }
    }
    let protected_vms: usize = protected.iter().sum();
    let source_bytes: i64 = data
        .jobs
        .iter()
        .zip(protected)
        .flat_map(|(job, n)| job.vms.iter().take(n))
        .map(|vm| i64::from(vm.size_gib) << 30)
        .sum();
    let (success, warning, failed) = session_results(data);
    let runs = success + warning + failed;
    let percent = if runs == 0 {
        0
    } else {
        (success + warning) * 100 / runs
    };
    frame("VmsOverviewReportFrame")
        .text_int("ProtectedVms", count(protected_vms))
        .text_int("BackedUpVms", count(protected_vms))
        .text_int("ReplicatedVms", 0)
        .text_int("RestorePoints", count(vm_points))
        .text_int("FullBackupPointsSize", full)
        .text_int("IncrementalBackupPointsSize", incremental)
        .text_int("ReplicaRestorePointsSize", 0)
        .text_int("SourceVmsSize", source_bytes)
        .text_int("SuccessBackupPercents", percent)
        .text("ProtectedVmsReportLink", report_link(data, 1))
}

/// `JobStatisticsReportFrame`. Durations (`TimeSpan`, an int in RestAPI.xsd) are
/// whole seconds. No replica job exists, so its job name is left out.
fn job_statistics(data: &Data) -> Element {
    let (success, warning, failed) = session_results(data);
    let longest = data
        .sessions
        .iter()
        .max_by_key(|s| (s.end_ms - s.start_ms, std::cmp::Reverse(s.start_ms)));
    let max_secs = longest.map_or(0, |s| (s.end_ms - s.start_ms) / 1000);
    let el = frame("JobStatisticsReportFrame")
        .text_int("RunningJobs", 0)
        .text_int("ScheduledJobs", scheduled_jobs(data))
        .text_int("ScheduledBackupJobs", scheduled_jobs(data))
        .text_int("ScheduledReplicaJobs", 0)
        .text_int("TotalJobRuns", success + warning + failed)
        .text_int("SuccessfulJobRuns", success)
        .text_int("WarningsJobRuns", warning)
        .text_int("FailedJobRuns", failed)
        .text_int("MaxJobDuration", max_secs)
        .text_int("MaxBackupJobDuration", max_secs)
        .text_int("MaxReplicaJobDuration", 0);
    let el = match longest {
        Some(s) => el.text("MaxDurationBackupJobName", data.jobs[s.job].name.clone()),
        None => el.absent("MaxDurationBackupJobName"),
    };
    el.absent("MaxDurationReplicaJobName")
        .text("BackupJobStatusReportLink", report_link(data, 2))
}

/// `ProcessedVmsReportFrame`: per day (UTC), the VMs backed up that day (VM
/// restore points created), for the [`PROCESSED_DAYS`] days up to the newest.
/// The repeated `Day` is `Days` in JSON (the plural, as for every repeated element).
fn processed_vms(data: &Data) -> Element {
    let newest = data
        .points
        .iter()
        .flat_map(|rp| rp.vms.iter().map(|v| v.created_ms))
        .max();
    let Some(newest) = newest else {
        return frame("ProcessedVmsReportFrame").list("Days", false, Vec::new());
    };
    let last_day = newest.div_euclid(DAY_MS);
    let first_day = last_day - (PROCESSED_DAYS - 1);
    let mut per_day = [0i64; PROCESSED_DAYS as usize];
    for rp in &data.points {
        for vm in &rp.vms {
            let day = vm.created_ms.div_euclid(DAY_MS);
            if (first_day..=last_day).contains(&day) {
                per_day[(day - first_day) as usize] += 1;
            }
        }
    }
    let days = per_day
        .iter()
        .enumerate()
        .map(|(n, &backed_up)| {
            Element::new("Day")
                .attr(
                    "Timestamp",
                    Civil::from_unix_ms((first_day + n as i64) * DAY_MS).iso(),
                )
                .attr_int("ReplicatedVms", 0)
                // EM's own spelling (RestAPI.xsd).
                .attr_int("BackupedVms", backed_up)
        })
        .collect();
    frame("ProcessedVmsReportFrame").list("Days", false, days)
}

/// `RepositoryReportFrame`: one `Period` per backup repository (one per backup
/// server, named after it; RestAPI.xsd does not say what a period's `Name` is).
/// `BackupSize` is the size of the restore points of the server's jobs.
fn repository(data: &Data) -> Element {
    let mut used = vec![0i64; data.servers.len()];
    for (i, rp) in data.points.iter().enumerate() {
        let server = data.jobs[rp.job].server;
        let bytes: i64 = (0..rp.vms.len()).map(|k| data.vm_point_bytes(i, k)).sum();
        if let Some(u) = used.get_mut(server) {
            *u += bytes;
        }
    }
    let periods = data
        .servers
        .iter()
        .enumerate()
        .map(|(s, server)| {
            let free = data.repository_free_bytes(s);
            let host = server.name.split('.').next().unwrap_or("vbr");
            Element::new("Period")
                .text("Name", format!("Backup Repository {host}"))
                .text_int("Capacity", used[s] + free)
                .text_int("FreeSpace", free)
                .text_int("BackupSize", used[s])
        })
        .collect();
    frame("RepositoryReportFrame")
        .attr("CapacityPlanningReportLink", CAPACITY_PLANNING_LINK)
        .list("Periods", false, periods)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::VMS_PER_JOB as VMS;
    use crate::model::{Scalar, Value};

    fn int(el: &Element, name: &str) -> i64 {
        el.members
            .iter()
            .find_map(|m| match (&m.value, m.name == name) {
                (Value::Text(Scalar::Int(i)), true) => Some(*i),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn figures_add_up() {
        let data = Data::generate(3, 400);
        let o = overview(&data);
        let latest: i64 = ["Successful", "Warning", "Failed"]
            .iter()
            .map(|k| int(&o, &format!("{k}VmLastestStates")))
            .sum();
        assert_eq!(latest, (JOBS * VMS) as i64);
        let s = job_statistics(&data);
        assert_eq!(int(&s, "TotalJobRuns"), data.sessions.len() as i64);
        assert_eq!(
            int(&s, "SuccessfulJobRuns") + int(&s, "WarningsJobRuns") + int(&s, "FailedJobRuns"),
            int(&s, "TotalJobRuns")
        );
        let v = vms_overview(&data);
        let vm_points: usize = data.points.iter().map(|rp| rp.vms.len()).sum();
        assert_eq!(int(&v, "RestorePoints"), vm_points as i64);
        assert!(int(&v, "ProtectedVms") <= (JOBS * VMS) as i64);
        assert!(int(&v, "FullBackupPointsSize") > 0);
        assert!((0..=100).contains(&int(&v, "SuccessBackupPercents")));
    }
}
