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
//!   job's first `vm_count` VMs (1 to 8), one backup file, full or incremental.

use std::collections::HashMap;

use uuid::Uuid;

use super::time::Civil;

/// Backup servers in the estate.
pub(crate) const SERVERS: usize = 3;
/// Backup jobs in the estate.
pub(crate) const JOBS: usize = 24;
/// VMs per job; a restore point holds 1 to this many of them.
pub(crate) const VMS_PER_JOB: usize = 8;

/// 2025-01-01T00:00:00Z in milliseconds since the Unix epoch.
const YEAR_2025_MS: i64 = 1_735_689_600_000;
/// Length of 2025 in milliseconds.
const YEAR_MS: u64 = 365 * 86_400_000;

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
}

/// A VM a job protects.
#[derive(Debug)]
pub(crate) struct Vm {
    pub name: String,
    /// vSphere managed object number (`vm-85541`).
    pub moref: u32,
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
    pub servers: Vec<BackupServer>,
    pub jobs: Vec<Job>,
    pub points: Vec<RestorePoint>,
    rp_by_id: HashMap<Uuid, usize>,
    vm_by_id: HashMap<Uuid, (usize, usize)>,
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
            .map(|j| Job {
                id: uuid(seed, tag::JOB, j as u64, 0),
                name: format!("Backup Job {}", j + 1),
                server: j % SERVERS,
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
                        }
                    })
                    .collect(),
            })
            .collect();
        let mut points = Vec::with_capacity(count);
        let mut rp_by_id = HashMap::with_capacity(count);
        let mut vm_by_id = HashMap::with_capacity(count * (VMS_PER_JOB + 1) / 2);
        for i in 0..count {
            let h = hash(seed, tag::DETAILS, i as u64, 0);
            let h2 = splitmix64(h);
            let backup_ms = YEAR_2025_MS + (h % YEAR_MS) as i64;
            let n = vm_count(seed, i);
            let mut at = backup_ms;
            let vms = (0..n)
                .map(|k| {
                    // Each VM finishes 20 s to 4 min after the one before it.
                    at += 20_000
                        + (hash(seed, tag::VM_POINT, i as u64, 100 + k as u64) % 220_000) as i64;
                    VmPoint {
                        id: uuid(seed, tag::VM_POINT, i as u64, k as u64),
                        slot: k,
                        created_ms: at,
                    }
                })
                .collect::<Vec<_>>();
            let id = restore_point_uuid(seed, i);
            rp_by_id.insert(id, i);
            for (k, vm) in vms.iter().enumerate() {
                vm_by_id.insert(vm.id, (i, k));
            }
            points.push(RestorePoint {
                id,
                job: (h2 % JOBS as u64) as usize,
                backup_ms,
                full: (h2 >> 20) % 7 == 0,
                file_id: uuid(seed, tag::BACKUP_FILE, i as u64, 0),
                file_tag: (h2 >> 40) as u16,
                vms,
            });
        }
        Data {
            servers,
            jobs,
            points,
            rp_by_id,
            vm_by_id,
        }
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
    fn five_thousand_points_generate_quickly() {
        let t = std::time::Instant::now();
        let d = Data::generate(1, 5000);
        assert_eq!(d.points.len(), 5000);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let names: std::collections::HashSet<_> = d
            .jobs
            .iter()
            .flat_map(|j| j.vms.iter().map(|v| v.name.clone()))
            .collect();
        assert_eq!(names.len(), JOBS * VMS_PER_JOB);
    }
}
