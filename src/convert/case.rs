//! Member naming: .NET's camel-case policy and the plural EM gives repeated elements.
//!
//! Both are used twice: by the schema generator (which stores every known name
//! precomputed in the table) and at run time for elements the table does not
//! know, where the result is written straight into the output without a
//! per-element `String`.

/// `System.Text.Json.JsonNamingPolicy.CamelCase`, exactly (.NET 5–9
/// `JsonCamelCaseNamingPolicy.FixCasing`): leave the name alone unless it starts
/// with an upper-case letter; otherwise lower-case the leading run of upper-case
/// letters, except the last one of a run that is followed by a lower-case
/// letter (`UID` → `uid`, `NASJobs` → `nasJobs`, `CreationTimeUTC` →
/// `creationTimeUTC`, `VCloudOrganizationConfigs` → `vCloudOrganizationConfigs`).
///
/// .NET works on UTF-16 code units: `char.IsUpper` is the `Lu` category (so a
/// surrogate, i.e. any character outside the BMP, is never upper-case) and
/// `char.ToLowerInvariant` is the simple one-to-one mapping. ASCII names take a
/// byte-wise path with the same result.
pub(crate) fn camel_into(name: &str, out: &mut Vec<u8>) {
    if name.is_ascii() {
        camel_ascii(name.as_bytes(), out);
    } else {
        camel_utf16(name, out);
    }
}

/// Convenience wrapper returning an owned `String` (generator and tests).
#[cfg(test)]
pub(crate) fn camel(name: &str) -> String {
    let mut v = Vec::with_capacity(name.len());
    camel_into(name, &mut v);
    String::from_utf8(v).unwrap_or_default()
}

fn camel_ascii(name: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(name);
    let chars = &mut out[start..];
    if chars.first().is_none_or(|c| !c.is_ascii_uppercase()) {
        return;
    }
    let n = chars.len();
    for i in 0..n {
        if i == 1 && !chars[i].is_ascii_uppercase() {
            break;
        }
        let has_next = i + 1 < n;
        if i > 0 && has_next && !chars[i + 1].is_ascii_uppercase() {
            if chars[i + 1] == b' ' {
                chars[i] = chars[i].to_ascii_lowercase();
            }
            break;
        }
        chars[i] = chars[i].to_ascii_lowercase();
    }
}

fn camel_utf16(name: &str, out: &mut Vec<u8>) {
    let mut units: Vec<u16> = name.encode_utf16().collect();
    if units.first().is_none_or(|&c| !is_upper_utf16(c)) {
        out.extend_from_slice(name.as_bytes());
        return;
    }
    let n = units.len();
    for i in 0..n {
        if i == 1 && !is_upper_utf16(units[i]) {
            break;
        }
        let has_next = i + 1 < n;
        if i > 0 && has_next && !is_upper_utf16(units[i + 1]) {
            if units[i + 1] == u16::from(b' ') {
                units[i] = to_lower_utf16(units[i]);
            }
            break;
        }
        units[i] = to_lower_utf16(units[i]);
    }
    let mut buf = [0u8; 4];
    for c in char::decode_utf16(units.iter().copied()) {
        let c = c.unwrap_or(char::REPLACEMENT_CHARACTER);
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
}

/// `char.IsUpper` for one UTF-16 code unit: category `Lu`. Rust's
/// `is_uppercase` is `Lu` plus `Other_Uppercase`, whose BMP part is the Roman
/// numerals and the circled letters; surrogates are never upper-case.
fn is_upper_utf16(u: u16) -> bool {
    match char::from_u32(u32::from(u)) {
        Some(c) => c.is_uppercase() && !matches!(u, 0x2160..=0x216F | 0x24B6..=0x24CF),
        None => false,
    }
}

/// `char.ToLowerInvariant` for one UTF-16 code unit (simple case mapping).
fn to_lower_utf16(u: u16) -> u16 {
    if u == 0x0130 {
        // LATIN CAPITAL LETTER I WITH DOT ABOVE: simple mapping is `i`.
        return u16::from(b'i');
    }
    let Some(c) = char::from_u32(u32::from(u)) else {
        return u;
    };
    let mut lower = c.to_lowercase();
    match (lower.next(), lower.next()) {
        (Some(l), None) => u16::try_from(u32::from(l)).unwrap_or(u),
        _ => u,
    }
}

/// The plural EM's serializer gives a repeated element: `Ref` → `Refs`,
/// `Repository` → `Repositories`, `FileEntry` → `FileEntries`, `Box` → `Boxes`,
/// `Address` → `Addresses`. A name that already ends in a single `s` (`Days`,
/// `Months`, `CloudFailoverTasks`, all repeated elements in EM's schema) is
/// kept as it is: EM names those members after the element.
pub(crate) fn plural_into(name: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(name);
    let n = name.len();
    let last = name.last().copied().unwrap_or(0);
    let prev = if n >= 2 { name[n - 2] } else { 0 };
    let lower = |b: u8| b.to_ascii_lowercase();
    match lower(last) {
        b's' if lower(prev) == b's' => out.extend_from_slice(b"es"),
        b's' => {}
        b'x' | b'z' => out.extend_from_slice(b"es"),
        b'h' if matches!(lower(prev), b'c' | b's') => out.extend_from_slice(b"es"),
        b'y' if n >= 2 && prev.is_ascii_alphabetic() && !is_vowel(prev) => {
            out.pop();
            out.extend_from_slice(if last == b'Y' { b"IES" } else { b"ies" });
        }
        _ => out.push(b's'),
    }
}

fn is_vowel(b: u8) -> bool {
    matches!(b.to_ascii_lowercase(), b'a' | b'e' | b'i' | b'o' | b'u')
}

/// Convenience wrapper returning an owned `String` (generator and tests).
#[cfg(test)]
pub(crate) fn plural(name: &str) -> String {
    let mut v = Vec::with_capacity(name.len() + 3);
    plural_into(name.as_bytes(), &mut v);
    String::from_utf8(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_matches_dotnet_policy() {
        let cases = [
            ("UID", "uid"),
            ("VmName", "vmName"),
            ("CreationTimeUTC", "creationTimeUTC"),
            ("NASJobs", "nasJobs"),
            ("VCloudOrganizationConfigs", "vCloudOrganizationConfigs"),
            ("Links", "links"),
            ("Href", "href"),
            ("IPv4", "iPv4"),
            ("URL", "url"),
            ("URLValue", "urlValue"),
            ("ID", "id"),
            ("Id", "id"),
            ("A", "a"),
            ("", ""),
            ("already", "already"),
            ("_Foo", "_Foo"),
            ("1Foo", "1Foo"),
            ("PagesCount", "pagesCount"),
            ("CPUCount", "cpuCount"),
            ("FSRoots", "fsRoots"),
            ("vCloudVmRestoreSpec", "vCloudVmRestoreSpec"),
            ("ABC DEF", "abc DEF"),
            ("AB Cd", "ab Cd"),
            ("HTTPServer", "httpServer"),
            ("EnterpiseRoles", "enterpiseRoles"),
            ("ÄBC", "äbc"),
            ("ÄbC", "äbC"),
            ("ⅠX", "ⅠX"),
            ("𝐀BC", "𝐀BC"),
            ("İX", "ix"),
        ];
        for (input, want) in cases {
            assert_eq!(camel(input), want, "camel({input:?})");
        }
    }

    #[test]
    fn plural_follows_em_names() {
        let cases = [
            ("Ref", "Refs"),
            ("Repository", "Repositories"),
            ("VmRestorePoint", "VmRestorePoints"),
            ("LogonSession", "LogonSessions"),
            ("FileEntry", "FileEntries"),
            ("Day", "Days"),
            ("Days", "Days"),
            ("Months", "Months"),
            ("Address", "Addresses"),
            ("Box", "Boxes"),
            ("Match", "Matches"),
            ("Key", "Keys"),
            ("EnterpriseRoleEntity", "EnterpriseRoleEntities"),
            ("CloudTenantResource", "CloudTenantResources"),
            ("StorageResourceStat", "StorageResourceStats"),
            ("SupportedVersion", "SupportedVersions"),
            ("x", "xes"),
            ("", "s"),
            ("Ünï", "Ünïs"),
        ];
        for (input, want) in cases {
            assert_eq!(plural(input), want, "plural({input:?})");
        }
    }
}
