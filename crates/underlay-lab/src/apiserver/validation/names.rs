//! The string formats of names and keys, with kube-apiserver's messages:
//! DNS-1123 labels and subdomains (object names), qualified names (label and
//! annotation keys), label values and IANA service names (named ports).

const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const QUALIFIED_MSG: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

fn is_alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn dns1123_label(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!(
            "must be no more than 63 characters and not empty; {LABEL_MSG}"
        ));
    }
    let ok = s.chars().all(|c| is_alnum_lower(c) || c == '-')
        && s.starts_with(is_alnum_lower)
        && s.ends_with(is_alnum_lower);
    if ok {
        Ok(())
    } else {
        Err(LABEL_MSG.to_string())
    }
}

pub fn dns1123_subdomain(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!(
            "must be no more than 253 characters and not empty; {SUBDOMAIN_MSG}"
        ));
    }
    let ok = s.split('.').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| is_alnum_lower(c) || c == '-')
            && part.starts_with(is_alnum_lower)
            && part.ends_with(is_alnum_lower)
    });
    if ok {
        Ok(())
    } else {
        Err(SUBDOMAIN_MSG.to_string())
    }
}

fn qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label and annotation keys: `[prefix/]name`.
pub fn qualified_name(s: &str) -> Result<(), String> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if !qualified_part(name) {
        return Err(QUALIFIED_MSG.to_string());
    }
    Ok(())
}

pub fn label_value(s: &str) -> Result<(), String> {
    if s.is_empty() || qualified_part(s) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".into())
    }
}

/// A port name (IANA_SVC_NAME): lowercase letters, digits and single
/// hyphens, at least one letter, at most 15 characters.
pub fn iana_svc_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_are_short_lowercase_and_singly_hyphenated() {
        for ok in ["http", "http-alt", "h2c", "a1"] {
            assert!(iana_svc_name(ok), "{ok}");
        }
        for bad in [
            "",
            "80",
            "HTTP",
            "-http",
            "http-",
            "http--alt",
            "not_a_name!",
            "sixteen-letterss",
        ] {
            assert!(!iana_svc_name(bad), "{bad}");
        }
    }
}
