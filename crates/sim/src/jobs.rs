//! EM's representations of jobs, backup job sessions and tasks as [`Document`]s.
//!
//! Each builder cites the docs page it follows (in tests/data/em/docs). `base` is the scheme and authority every
//! `Href` starts with, e.g. `https://127.0.0.1:9398`.

use super::data::{self, Data, Job, Session, SessionResult};
use super::model::{Document, Element, Link, RootStyle};
use super::resources;
use super::state::Task;
use super::time::Civil;

/// The days of the week in EM's order (`DaysOfWeekEnumeration`, get_jobs_id.md).
const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];

/// The months (`JobScheduleMonthEnumeration`, get_jobs_id.md).
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// `State` of every generated session: they have all ended (get_backupsessions_id.md
/// lists Starting, Stopping, Working, Pausing, Resuming, Stopped).
pub(crate) const SESSION_STATE: &str = "Stopped";

fn job_href(base: &str, job: &Job) -> String {
    format!("{base}/api/jobs/{}", job.id)
}

fn server_link(base: &str, data: &Data, job: &Job) -> Link {
    resources::server_link(base, &data.servers[job.server])
}

/// A job's reference: `Ref` in a list, `EntityRef` alone. Attributes and links as
/// in scenario_starting_a_job.md (step 3) and jobs_id.md, with the sessions link
/// of a backup job (`BackupJobSessionReferenceList`, get_jobs_id.md).
pub(crate) fn job_ref(element: &'static str, base: &str, data: &Data, job: &Job) -> Element {
    let href = job_href(base, job);
    Element::new(element)
        .attr("Type", "JobReference")
        .attr("Href", href.clone())
        .attr("Name", job.name.clone())
        .attr("UID", format!("urn:veeam:Job:{}", job.id))
        .links(vec![
            server_link(base, data, job),
            Link::named(
                "Alternate",
                "Job",
                format!("{href}?format=Entity"),
                &job.name,
            ),
            Link::new(
                "Down",
                "BackupJobSessionReferenceList",
                format!("{href}/backupSessions"),
            ),
        ])
}

/// `GET /api/jobs`: references to every job (get_jobs.md, root `EntityReferences`).
pub(crate) fn job_refs(base: &str, data: &Data) -> Document {
    let refs = data
        .jobs
        .iter()
        .map(|job| job_ref("Ref", base, data, job))
        .collect();
    Document::new(
        Element::new("EntityReferences").list("Refs", false, refs),
        RootStyle::Plain,
    )
}

/// `GET /api/jobs/{id}`: root `EntityRef` (jobs_id.md).
pub(crate) fn job_ref_doc(base: &str, data: &Data, job: &Job) -> Document {
    Document::new(job_ref("EntityRef", base, data, job), RootStyle::Plain)
}

/// `HH:MM:SS.0000000+00:00`, the schedule's time of day (get_jobs_id.md writes
/// `18:00:00.0000000+01:00`; the simulated servers run on UTC).
fn time_of_day(minute: u32) -> String {
    format!("{:02}:{:02}:00.0000000+00:00", minute / 60, minute % 60)
}

/// `JobScheduleOptions` of a job that runs every day (get_jobs_id.md example 1,
/// EM 13's `Standart` wrapper included). The members whose JSON form the
/// reference material does not show (`Schedule`/`TimePeriods` days, which carry
/// text and an attribute) are left out, as `minOccurs="0"` in RestAPI.xsd allows.
fn schedule(job: &Job) -> Element {
    let time = time_of_day(job.run_minute);
    let standart = Element::new("Standart")
        .child(
            Element::new("RetryOptions")
                .text_int("RetryTimes", 3)
                .text_int("RetryTimeout", 10)
                .text_bool("RetrySpecified", true),
        )
        .text_bool("WaitForBackupCompletion", true)
        .text_int("BackupCompetitionWaitingPeriodMin", 180)
        .child(
            Element::new("OptionsDaily")
                .attr_bool("Enabled", true)
                .text("Kind", "Everyday")
                .texts("Days", &DAYS)
                .text("Time", time.clone())
                .text_int("TimeOffsetUtc", 0),
        )
        .child(
            Element::new("OptionsMonthly")
                .attr_bool("Enabled", false)
                .text("Time", time)
                .text_int("TimeOffsetUtc", 0)
                .text("DayNumberInMonth", "Fourth")
                .text("DayOfWeek", "Saturday")
                .texts("Months", &MONTHS)
                .text_int("DayOfMonth", 1),
        )
        .child(
            Element::new("OptionsPeriodically")
                .attr_bool("Enabled", false)
                .text("Kind", "Hours")
                .text_int("FullPeriod", 1),
        )
        .child(Element::new("OptionsContinuous").attr_bool("Enabled", false))
        .child(Element::new("OptionsBackupWindow").attr_bool("Enabled", false))
        .child(Element::new("OptionsDaisyChaining").attr_bool("Enabled", false));
    Element::new("JobScheduleOptions").child(standart)
}

/// One VM in a job's `Includes` (`ObjectInJobType`; get_jobs_id.md example 1).
/// `GuestProcessingOptions` is left out (declared, so `null` in JSON).
fn object_in_job(base: &str, data: &Data, j: usize, k: usize) -> Element {
    let job = &data.jobs[j];
    let vm = &job.vms[k];
    let id = data::object_in_job_uuid(data.seed, j, k);
    Element::new("ObjectInJob")
        .attr("Type", "ObjectInJob")
        .attr("Href", format!("{}/includes/{id}", job_href(base, job)))
        .text("ObjectInJobId", id.to_string())
        .text(
            "HierarchyObjRef",
            format!(
                "urn:VMware:Vm:{}.vm-{}",
                data.servers[job.server].vcenter, vm.moref
            ),
        )
        .text("Name", vm.name.clone())
        .text("DisplayName", vm.name.clone())
        .absent("GuestProcessingOptions")
}

/// `Created by VBR01\Administrator at 12/5/2024 9:41 AM.`: who made the job
/// and when, in the form of scenario_starting_a_job.md (the administrator of the
/// job's backup server).
pub(crate) fn description(data: &Data, job: &Job) -> String {
    let server = &data.servers[job.server];
    let host = server
        .name
        .split('.')
        .next()
        .unwrap_or("vbr")
        .to_uppercase();
    format!(
        "Created by {host}\\Administrator at {}.",
        Civil::from_unix_ms(job.created_ms).us()
    )
}

/// A `Job` entity (get_jobs_id.md, example 1 for the members and links).
fn job_entity(base: &str, data: &Data, j: usize) -> Element {
    let job = &data.jobs[j];
    let href = job_href(base, job);
    let includes = (0..job.vms.len())
        .map(|k| object_in_job(base, data, j, k))
        .collect();
    let mut el = Element::new("Job")
        .attr("Href", format!("{href}?format=Entity"))
        .attr("Type", "Job")
        .attr("Name", job.name.clone())
        .attr("UID", format!("urn:veeam:Job:{}", job.id))
        .links(vec![
            server_link(base, data, job),
            Link::named("Alternate", "JobReference", href.clone(), &job.name),
            Link::named("Edit", "JobReference", href.clone(), &job.name),
            Link::untyped("Clone", format!("{href}?action=clone")),
            Link::untyped(
                "ToggleScheduleEnabled",
                format!("{href}?action=toggleScheduleEnabled"),
            ),
            Link::new("Down", "ObjectInJobList", format!("{href}/includes")),
            Link::new(
                "Down",
                "BackupJobSessionReferenceList",
                format!("{href}/backupSessions"),
            ),
            Link::new("Create", "ObjectInJob", format!("{href}/includes")),
            Link::untyped("Start", format!("{href}?action=start")),
            Link::untyped("Stop", format!("{href}?action=stop")),
            Link::untyped("Retry", format!("{href}?action=retry")),
        ])
        .text("JobType", "Backup")
        .text("Platform", "VMware")
        .text("Description", description(data, job))
        .text_bool("ScheduleConfigured", true)
        .text_bool("ScheduleEnabled", job.schedule_enabled);
    el = match data.next_run_ms(j) {
        Some(ms) => el.text("NextRun", Civil::from_unix_ms(ms).iso()),
        None => el.absent("NextRun"),
    };
    el.child(schedule(job)).child(
        Element::new("JobInfo").child(
            Element::new("BackupJobInfo")
                .wrapped_list("Includes", "ObjectInJobs", includes)
                .absent("GuestProcessingOptions")
                .absent("AdvancedStorageOptions"),
        ),
    )
}

/// `GET /api/jobs/{id}?format=Entity` (get_jobs_id.md examples 2 and 3 for the
/// serializer's root).
pub(crate) fn job_entity_doc(base: &str, data: &Data, j: usize) -> Document {
    Document::new(job_entity(base, data, j), RootStyle::Serializer)
}

/// `GET /api/jobs?format=Entity`: root `Jobs` (RestAPI.xsd, mapping_link_types_to_xml_schema.md
/// `JobList`), written like the other entity collections.
pub(crate) fn job_entities(base: &str, data: &Data) -> Document {
    let items = (0..data.jobs.len())
        .map(|j| job_entity(base, data, j))
        .collect();
    Document::new(
        Element::new("Jobs").list("Jobs", false, items),
        RootStyle::Plain,
    )
}

/// Job `j` as a query returns it (query.rs).
pub(crate) fn job_item(base: &str, data: &Data, j: usize, entity: bool) -> Element {
    if entity {
        job_entity(base, data, j)
    } else {
        job_ref("Ref", base, data, &data.jobs[j])
    }
}

fn session_href(base: &str, s: &Session) -> String {
    format!("{base}/api/backupSessions/{}", s.id)
}

fn session_up_links(base: &str, data: &Data, s: &Session) -> [Link; 2] {
    let job = &data.jobs[s.job];
    [
        server_link(base, data, job),
        Link::named("Up", "JobReference", job_href(base, job), &job.name),
    ]
}

/// A session's reference: `Ref` in a list, `EntityRef` alone (backupsessions_id.md
/// for the attributes; the links follow the other references: Up, Alternate).
pub(crate) fn session_ref(element: &'static str, base: &str, data: &Data, s: &Session) -> Element {
    let href = session_href(base, s);
    let name = data.session_name(s);
    let mut links = session_up_links(base, data, s).to_vec();
    links.push(Link::named(
        "Alternate",
        "BackupJobSession",
        format!("{href}?format=Entity"),
        &name,
    ));
    Element::new(element)
        .attr("Type", "BackupJobSessionReference")
        .attr("Href", href)
        .attr("Name", name)
        .attr("UID", format!("urn:veeam:BackupJobSession:{}", s.id))
        .links(links)
}

/// A `BackupJobSession` entity (backupsessions_id.md; members and links of
/// get_backupsessions_id.md). `FailureMessage` is sent for failed runs only, as
/// the docs' successful example leaves it out.
fn session_entity(base: &str, data: &Data, s: &Session) -> Element {
    let href = session_href(base, s);
    let name = data.session_name(s);
    let job = &data.jobs[s.job];
    let mut links = session_up_links(base, data, s).to_vec();
    links.push(Link::named(
        "Alternate",
        "BackupJobSessionReference",
        href.clone(),
        &name,
    ));
    links.push(Link::new(
        "Down",
        "BackupTaskSessionReferenceList",
        format!("{href}/taskSessions"),
    ));
    links.push(Link::untyped("Stop", format!("{href}?action=stop")));
    if let Some(i) = s.point {
        // The example's `Rel="Related"`; the page's link table says Down.
        let rp = &data.points[i];
        links.push(Link::named(
            "Related",
            "RestorePointReference",
            format!("{base}/api/restorePoints/{}", rp.id),
            &data.rp_name(rp),
        ));
    }
    let el = Element::new("BackupJobSession")
        .attr("Href", format!("{href}?format=Entity"))
        .attr("Type", "BackupJobSession")
        .attr("Name", name)
        .attr("UID", format!("urn:veeam:BackupJobSession:{}", s.id))
        .links(links)
        .text("JobUid", format!("urn:veeam:Job:{}", job.id))
        .text("JobName", job.name.clone())
        .text("JobType", "Backup")
        .text("CreationTimeUTC", Civil::from_unix_ms(s.start_ms).iso())
        .text("EndTimeUTC", Civil::from_unix_ms(s.end_ms).iso())
        .text("State", SESSION_STATE)
        .text("Result", s.result.name())
        .text_int("Progress", 100);
    let el = if s.result == SessionResult::Failed {
        el.text("FailureMessage", failure_message(data, s))
    } else {
        el.absent("FailureMessage")
    };
    el.text_bool("IsRetry", s.is_retry)
}

/// Why a failed run failed: its first VM could not be snapshotted.
pub(crate) fn failure_message(data: &Data, s: &Session) -> String {
    let vm = data.jobs[s.job]
        .vms
        .first()
        .map_or("the VM", |v| v.name.as_str());
    format!("Error: Failed to create VM snapshot of {vm}: the operation timed out.")
}

/// `GET /api/backupSessions`: root `EntityReferences` (get_backupsessions.md).
pub(crate) fn session_refs(base: &str, data: &Data) -> Document {
    let refs = data
        .sessions
        .iter()
        .map(|s| session_ref("Ref", base, data, s))
        .collect();
    Document::new(
        Element::new("EntityReferences").list("Refs", false, refs),
        RootStyle::Plain,
    )
}

/// `GET /api/backupSessions/{id}`: root `EntityRef` (backupsessions_id.md).
pub(crate) fn session_ref_doc(base: &str, data: &Data, s: &Session) -> Document {
    Document::new(session_ref("EntityRef", base, data, s), RootStyle::Plain)
}

/// `GET /api/backupSessions/{id}?format=Entity`: written by the serializer, with
/// the XML declaration (get_backupsessions_id.md's example starts with it).
pub(crate) fn session_entity_doc(base: &str, data: &Data, s: &Session) -> Document {
    Document::new(session_entity(base, data, s), RootStyle::Serializer)
}

/// `GET /api/backupSessions?format=Entity`: root `BackupJobSessions` (RestAPI.xsd).
pub(crate) fn session_entities(base: &str, data: &Data) -> Document {
    let items = data
        .sessions
        .iter()
        .map(|s| session_entity(base, data, s))
        .collect();
    Document::new(
        Element::new("BackupJobSessions").list("BackupJobSessions", false, items),
        RootStyle::Plain,
    )
}

/// A session as a query returns it (query.rs).
pub(crate) fn session_item(base: &str, data: &Data, s: &Session, entity: bool) -> Element {
    if entity {
        session_entity(base, data, s)
    } else {
        session_ref("Ref", base, data, s)
    }
}

/// `State` of a task (get_tasks_id.md); the simulator's go from the first to the
/// last.
pub(crate) const TASK_STATES: [&str; 3] = ["Running", "OperationFinished", "Finished"];

/// The index of a task's state in [`TASK_STATES`].
pub(crate) fn task_state(t: &Task) -> usize {
    if t.running() {
        0
    } else {
        TASK_STATES.len() - 1
    }
}

/// A `Task` (post_jobs_id_actionstart.md, get_tasks_id.md): `Running` without a
/// `Result` right after the start (scenario_starting_a_job.md step 7), then
/// `Finished` with `<Result Success="true">` and the message of get_tasks_id.md.
pub(crate) fn task_element(base: &str, data: &Data, t: &Task) -> Element {
    let id = t.id();
    let href = task_href(base, &id);
    let state = task_state(t);
    let el = Element::new("Task")
        .attr("Type", "Task")
        .attr("Href", href.clone())
        .links(vec![Link::new("Delete", "Task", href)])
        .text("TaskId", id)
        .text("State", TASK_STATES[state])
        .text("Operation", "StartJob");
    if state < TASK_STATES.len() - 1 {
        el.absent("Result")
    } else {
        el.child(Element::new("Result").attr_bool("Success", true).text(
            "Message",
            format!("Job \"{}\" triggered to start.", data.jobs[t.job].name),
        ))
    }
}

/// `GET /api/tasks/{id}`, and the body of a job start's 202.
pub(crate) fn task(base: &str, data: &Data, t: &Task) -> Document {
    Document::new(task_element(base, data, t), RootStyle::Plain)
}

/// `GET /api/tasks`: root `Tasks` of `Task` entries (get_tasks.md, tasks.md;
/// `TaskListType` in RestAPI.xsd), JSON `{"Tasks": [...]}` like the other root
/// lists.
pub(crate) fn task_list(base: &str, data: &Data, tasks: &[Task]) -> Document {
    let items = tasks.iter().map(|t| task_element(base, data, t)).collect();
    Document::new(
        Element::new("Tasks").list("Tasks", false, items),
        RootStyle::Plain,
    )
}

/// `{base}/api/tasks/{id}`.
pub(crate) fn task_href(base: &str, id: &str) -> String {
    format!("{base}/api/tasks/{id}")
}
