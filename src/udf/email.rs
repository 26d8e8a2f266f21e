//! E-mail normalisation: the form under which two typed addresses of one mailbox compare equal.

/// Domains whose mailboxes ignore dots in the local part.
const DOT_INSENSITIVE: &[&str] = &["gmail.com"];

/// Frequent typing errors in the big consumer domains, mapped to the real domain.
const DOMAIN_TYPOS: &[(&str, &str)] = &[
    ("googlemail.com", "gmail.com"),
    ("gmial.com", "gmail.com"),
    ("gmai.com", "gmail.com"),
    ("gamil.com", "gmail.com"),
    ("gmail.con", "gmail.com"),
    ("gmail.cm", "gmail.com"),
    ("gmail.nl", "gmail.com"),
    ("hotmial.com", "hotmail.com"),
    ("hotmail.con", "hotmail.com"),
    ("hotmal.com", "hotmail.com"),
    ("hotmail.nll", "hotmail.nl"),
    ("outlook.con", "outlook.com"),
    ("ziggo.nll", "ziggo.nl"),
    ("kpnmail.nll", "kpnmail.nl"),
];

/// The consumer mail domains most Dutch customers use. A domain one typed character away
/// from one of these (`hotmil.com`, `zigo.nl`, `gmail.co`) is taken to be it: nobody
/// registers those as mail domains, and the typo would otherwise split a person.
const WELL_KNOWN: &[&str] = &[
    "gmail.com",
    "hotmail.com",
    "hotmail.nl",
    "outlook.com",
    "outlook.nl",
    "live.nl",
    "live.com",
    "msn.com",
    "yahoo.com",
    "icloud.com",
    "ziggo.nl",
    "kpnmail.nl",
    "kpnplanet.nl",
    "xs4all.nl",
    "planet.nl",
    "home.nl",
    "hetnet.nl",
    "casema.nl",
    "upcmail.nl",
    "telfort.nl",
    "chello.nl",
    "quicknet.nl",
];

fn corrected_domain(domain: &str) -> &str {
    if let Some((_, fixed)) = DOMAIN_TYPOS.iter().find(|(typo, _)| *typo == domain) {
        return fixed;
    }
    if domain.len() < 7 || WELL_KNOWN.contains(&domain) {
        return domain;
    }
    near_well_known(domain).unwrap_or(domain)
}

thread_local! {
    /// The well-known domain each other domain is a typo of (or none), as found before.
    /// Most addresses are at a few hundred domains, and comparing one with every
    /// well-known domain was a fifth of normalising an address.
    static NEAR: std::cell::RefCell<foldhash::HashMap<String, Option<&'static str>>> = Default::default();
}

/// The one well-known domain `domain` is a typed character away from, if there is one.
fn near_well_known(domain: &str) -> Option<&'static str> {
    if let Some(found) = NEAR.with_borrow(|near| near.get(domain).copied()) {
        return found;
    }
    let mut near = WELL_KNOWN.iter().filter(|known| super::similarity::damerau_levenshtein(domain, known) == 1);
    let found = match (near.next(), near.next()) {
        (Some(known), None) => Some(*known),
        _ => None,
    };
    NEAR.with_borrow_mut(|near| {
        // Bounded: a dump of company addresses can hold a domain per customer.
        if near.len() >= 1 << 16 {
            near.clear();
        }
        near.insert(domain.to_string(), found);
    });
    found
}

/// Trims, lower-cases and canonicalises an address: `+tags` are dropped (sub-addressing is
/// near-universal among mail providers), dots are dropped where the provider ignores them
/// and well-known domain typos are corrected. Returns `None` for text that is not an
/// address at all (no `@`, no domain with a dot, spaces inside).
pub fn normalize_email(raw: &str) -> Option<String> {
    let trimmed = raw.trim();
    let s = trimmed.strip_prefix("mailto:").unwrap_or(trimmed);
    let s = s.trim().trim_matches(|c| c == '<' || c == '>' || c == '"' || c == '\'').trim().to_lowercase();
    let (local, domain) = s.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    if local.is_empty()
        || !domain.contains('.')
        || domain.starts_with('.')
        || s.chars().any(|c| c.is_whitespace() || c == ',' || c == ';')
    {
        return None;
    }
    let domain = corrected_domain(domain);
    let local = local.split('+').next().unwrap_or(local);
    let local = if DOT_INSENSITIVE.contains(&domain) { local.replace('.', "") } else { local.to_string() };
    if local.is_empty() {
        return None;
    }
    Some(format!("{local}@{domain}"))
}

/// The local part of a normalised address (`jan.devries` of `jan.devries@ziggo.nl`).
pub fn email_local_part(normalized: &str) -> Option<&str> {
    normalized.rsplit_once('@').map(|(local, _)| local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gmail_dots_tags_and_case() {
        assert_eq!(normalize_email("  Jan.De.Vries+shop@GoogleMail.com ").as_deref(), Some("jandevries@gmail.com"));
        assert_eq!(normalize_email("j.devries@gmail.com"), normalize_email("JDeVries@gmail.com"));
    }

    #[test]
    fn dots_matter_outside_gmail() {
        assert_eq!(normalize_email("Jan.de.Vries@Ziggo.nl").as_deref(), Some("jan.de.vries@ziggo.nl"));
    }

    #[test]
    fn tags_dropped_everywhere_and_typos_fixed() {
        assert_eq!(normalize_email("piet+nieuwsbrief@hotmial.com").as_deref(), Some("piet@hotmail.com"));
        assert_eq!(normalize_email("mailto:<Els@KPNmail.nl>").as_deref(), Some("els@kpnmail.nl"));
        for typo in ["hotmil.com", "hotmail.cmo", "hotmaill.com", "hotmailc.om"] {
            assert_eq!(normalize_email(&format!("piet@{typo}")).as_deref(), Some("piet@hotmail.com"), "{typo}");
        }
        assert_eq!(normalize_email("jan@zigo.nl").as_deref(), Some("jan@ziggo.nl"));
        // Real domains near a known one stay as they are, and so do short ones.
        assert_eq!(normalize_email("jan@live.com").as_deref(), Some("jan@live.com"));
        assert_eq!(normalize_email("jan@gmx.com").as_deref(), Some("jan@gmx.com"));
        assert_eq!(normalize_email("jan@werk12.nl").as_deref(), Some("jan@werk12.nl"));
    }

    #[test]
    fn garbage_is_not_an_address() {
        for bad in ["", "   ", "geen", "jan@", "@ziggo.nl", "jan@localhost", "jan de vries@x.nl", "+@gmail.com"] {
            assert_eq!(normalize_email(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn local_part() {
        assert_eq!(email_local_part("jan.devries@ziggo.nl"), Some("jan.devries"));
    }
}
