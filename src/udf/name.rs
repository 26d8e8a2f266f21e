//! Name folding for Dutch (and English) personal names: particles (tussenvoegsels),
//! initials, nicknames and a phonetic key.

use deunicode::deunicode;

/// Name particles that precede a Dutch, Flemish or German surname.
pub const PARTICLES: &[&str] = &[
    "van", "de", "der", "den", "het", "t", "te", "ten", "ter", "op", "in", "s", "la", "le", "du", "von", "zu", "di",
    "da", "del", "della", "dos", "das", "el", "al", "aan", "bij", "uit", "uijt", "vd", "v",
];

/// Lower-case ASCII words of a name: accents folded (`Müller` -> `muller`), punctuation
/// dropped, abbreviated particles written out (`v.d.` -> `van der`), and a `Vries, de`
/// written as `de Vries`.
pub fn name_words(raw: &str) -> NameWords {
    // deunicode writes ASCII only.
    let ascii = deunicode(raw).to_ascii_lowercase();
    let reordered = match ascii.split_once(',') {
        Some((surname, rest)) if !rest.trim().is_empty() => format!("{} {}", rest, surname),
        _ => ascii,
    };
    // Every record's names pass here several times: most have no abbreviation to expand.
    let expanded = if reordered.contains(['.', '/']) {
        reordered.replace("v.d.", " van der ").replace("v/d", " van der ").replace("i.p.v.", " ")
    } else {
        reordered
    };
    NameWords(expanded)
}

/// A name's folded text, read word by word: the words borrow from the one text (every
/// record's names pass here several times, and a string per word was 5% of staging).
pub struct NameWords(String);

impl NameWords {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0
            .split(|c: char| !c.is_ascii_alphanumeric())
            .flat_map(|word| match word {
                "" => [None, None],
                "vd" | "vdr" => [Some("van"), Some("der")],
                w => [Some(w), None],
            })
            .flatten()
    }

    pub fn first(&self) -> Option<&str> {
        self.iter().next()
    }

    /// The words without spaces.
    pub fn concat(&self) -> String {
        self.iter().collect()
    }
}

fn is_particle(word: &str) -> bool {
    PARTICLES.contains(&word)
}

/// Case, accents, punctuation and white space folded away, particles kept and moved in
/// front: `de Vries`, `Vries, de`, `De  Vries` and `devries` all fold to `devries`.
pub fn fold_name(raw: &str) -> Option<String> {
    let folded: String = name_words(raw).concat();
    (!folded.is_empty()).then_some(folded)
}

/// The surname without its particles (`van der Berg` -> `berg`), for records that drop
/// the particle or put it in a separate field. A surname made only of particles stays.
pub fn strip_particles(raw: &str) -> Option<String> {
    let words = name_words(raw);
    let core: String = words.iter().filter(|w| !is_particle(w)).collect();
    if core.is_empty() { Some(words.concat()).filter(|all| !all.is_empty()) } else { Some(core) }
}

/// First letter of a first name, for comparing `J.` with `Jan`.
pub fn name_initial(raw: &str) -> Option<String> {
    name_words(raw).first().and_then(|w| w.chars().next()).map(String::from)
}

/// Whether a first name is only initials (`J.`, `J.W.`, `JW`).
pub fn is_initials(raw: &str) -> bool {
    let trimmed = raw.trim();
    let letters = trimmed.chars().filter(|c| c.is_alphabetic()).count();
    letters > 0 && (letters == 1 || (trimmed.contains('.') && letters <= 4 && !trimmed.contains(' ')))
        || (letters <= 3 && letters > 0 && trimmed.chars().all(|c| c.is_uppercase() || c == '.'))
}

/// Splits a full name held in one field (`Jan de Vries`, `J. van der Berg`,
/// `Vries, Jan de`) into first name and surname (with its particles).
pub fn split_full_name(raw: &str) -> (Option<String>, Option<String>) {
    let raw = raw.trim();
    if raw.is_empty() {
        return (None, None);
    }
    if let Some((surname, given)) = raw.split_once(',') {
        // "Vries, Jan de": particles trail the given names.
        let mut given_words: Vec<&str> = given.split_whitespace().collect();
        let mut particles = Vec::new();
        while given_words.len() > 1 && is_particle(&given_words[given_words.len() - 1].to_lowercase()) {
            particles.insert(0, given_words.pop().unwrap_or_default());
        }
        particles.push(surname.trim());
        let first = given_words.join(" ");
        return (non_empty(first), non_empty(particles.join(" ")));
    }
    let mut words: Vec<&str> = raw.split_whitespace().collect();
    // "dhr. de Vries", "mevr. Jansen": a salutation is not a first name.
    while words.len() > 1 && SALUTATIONS.contains(&words[0].to_lowercase().trim_end_matches('.')) {
        words.remove(0);
        if words.len() == 1 || is_particle(&words[0].to_lowercase()) {
            return (None, non_empty(words.join(" ")));
        }
    }
    if words.len() == 1 {
        // One word alone is a first name when it is a known one ("Hanneke"), else a surname.
        let w = words[0].to_string();
        return if is_known_first_name(&w) { (Some(w), None) } else { (None, Some(w)) };
    }
    let particle_at = words
        .iter()
        .enumerate()
        .skip(1)
        .find(|(i, w)| *i < words.len() - 1 && is_particle(&w.to_lowercase().replace(['.', '\''], "")))
        .map(|(i, _)| i);
    let split = particle_at.unwrap_or(words.len() - 1);
    (non_empty(words[..split].join(" ")), non_empty(words[split..].join(" ")))
}

/// Forms of address that precede a surname in free-text name fields.
const SALUTATIONS: &[&str] =
    &["dhr", "hr", "heer", "de heer", "mevr", "mw", "mevrouw", "mr", "mrs", "ms", "fam", "familie", "dr", "ir", "drs"];

/// Whether a word is a first name we know: a name of a nickname group or a common given
/// name.
pub fn is_known_first_name(word: &str) -> bool {
    roots_index().contains_key(name_words(word).concat().as_str())
}

/// Frequent Dutch given names outside the nickname groups.
const COMMON_FIRST_NAMES: &[&str] = &[
    "daan", "sem", "lucas", "levi", "finn", "milan", "bram", "ruben", "thijs", "jesse", "stijn", "lars", "tim",
    "niels", "bas", "erik", "mark", "jeroen", "marco", "joost", "koen", "wouter", "vincent", "arjen", "mohammed",
    "ahmed", "youssef", "kevin", "dennis", "patrick", "emma", "julia", "sophie", "lotte", "eva", "fleur", "iris",
    "femke", "lieke", "noa", "tess", "sara", "linda", "ingrid", "monique", "esther", "wendy", "mirjam", "saskia",
    "annemiek", "fatima", "yasmina", "nicole", "kim", "judith", "renate", "bianca", "chantal", "daphne", "ilse",
    "marloes", "luuk", "noah", "jayden", "max", "julian", "mila", "zoe", "nina", "roos", "isa", "evi", "sarah",
    "laura", "anouk", "marleen", "petra", "ellen", "henk", "kees", "piet", "jan", "klaas", "gerrit", "willem",
];

fn non_empty(s: String) -> Option<String> {
    (!s.trim().is_empty()).then_some(s)
}

/// Nickname groups: the first entry is the root every other spelling maps to. A variant
/// that could belong to two roots is listed once, under the more common one. Names that
/// are common given names in their own right (Marieke, Sanne, Thijs, Sander) are left
/// out: a mother Maria and a daughter Marieke at one address are two people.
const NICKNAMES: &[&[&str]] = &[
    &["johannes", "jan", "hans", "johan", "joop", "hannes", "jo", "john", "jean", "sjaak"],
    &["wilhelmus", "willem", "wim", "willy", "pim", "william", "bill", "will", "billy", "liam"],
    &["cornelis", "kees", "cor", "corne", "cees"],
    &["hendrik", "henk", "hein", "henry", "harry", "hendrick", "henri"],
    &["jacobus", "jaap", "koos", "jacob", "cobus", "jakob", "james", "jim", "jimmy", "jamie"],
    &["gerardus", "gerard", "gert", "gerrit", "geert", "ger", "gerhard"],
    &["theodorus", "theo", "dorus", "ted"],
    &["adrianus", "adriaan", "arie", "janus", "aad", "adrie", "ad"],
    &["antonius", "anton", "toon", "ton", "teun", "tonnie", "anthony", "tony", "antoon"],
    &["franciscus", "frans", "francis"],
    &["petrus", "piet", "pieter", "peter", "pete", "pier"],
    &["nicolaas", "klaas", "niek", "nico", "nicholas", "nick", "claes"],
    &["albertus", "albert", "bert", "lambertus", "lambert", "bertus"],
    &["bernardus", "bernard", "ben", "barend", "berend", "benjamin"],
    &["dirk", "dick", "dik", "diederik", "derk"],
    &["gijsbertus", "gijs", "gijsbert"],
    &["josephus", "jozef", "joseph", "joep", "jos", "sjef", "joe", "joey"],
    &["martinus", "martin", "tinus", "maarten", "marten"],
    &["leonardus", "leendert", "leo", "leon", "leen", "leonard"],
    &["marinus", "rinus", "marijn"],
    &["robertus", "robert", "rob", "robbie", "bob", "bobby", "robbert"],
    &["richardus", "richard", "rick", "rich"],
    &["alexander", "alex", "xander", "sandy"],
    &["thomas", "tom", "thom", "tommy", "tomas"],
    &["christiaan", "chris", "christian", "christopher", "kris"],
    &["matthijs", "mathijs", "matthias", "ties", "matthew", "matt"],
    &["michael", "michiel", "mike", "maikel", "mick", "michel"],
    &["stefanus", "stefan", "stephan", "steven", "stephen", "steve", "stef"],
    &["daniel", "dani", "danny", "dan"],
    &["david", "dave", "davy"],
    &["andreas", "andre", "andries", "andrew", "andy", "dre"],
    &["edwardus", "edward", "ed", "eddie", "eddy", "ned", "edwin"],
    &["charles", "charlie", "karel", "chuck"],
    &["samuel", "sam", "sammy"],
    &[
        "elisabeth",
        "els",
        "elise",
        "lies",
        "liesbeth",
        "betty",
        "bep",
        "ellie",
        "lisa",
        "elizabeth",
        "liz",
        "beth",
        "lizzy",
        "eliza",
        "elsbeth",
        "betsy",
    ],
    &[
        "catharina",
        "tineke",
        "toos",
        "katrien",
        "rina",
        "trijntje",
        "catherine",
        "katherine",
        "kate",
        "kathy",
        "katie",
        "cathy",
        "kat",
        "katrina",
        "karin",
    ],
    &["maria", "marie", "mies", "ria", "mia", "mieke", "mary", "marij"],
    &[
        "johanna", "anneke", "hanneke", "joke", "hanna", "hannah", "annie", "jannie", "jans", "janneke", "jo-anne",
        "joanne",
    ],
    &["wilhelmina", "willemien", "mien", "wil", "mina", "wilma", "willemijn", "mientje"],
    &["geertruida", "truus", "trudy", "geertje", "truida", "gertrude", "trudie"],
    &["cornelia", "corrie", "neeltje", "lia", "cora", "corry", "nel", "nelly"],
    &["hendrika", "riek", "rika", "henny", "rieky", "hennie"],
    &["jacoba", "coby", "coba", "co", "jacobine", "jacqueline", "jacky", "jacqueline"],
    &["adriana", "adrie", "jana", "adrienne"],
    &["petronella", "nel", "nelleke", "pieternel", "petra", "nelly", "ella", "pietje"],
    &["aleida", "alida", "ali", "lida", "alie", "aaltje"],
    &[
        "margaretha",
        "greet",
        "grietje",
        "margriet",
        "greta",
        "marga",
        "margot",
        "margaret",
        "maggie",
        "meg",
        "peggy",
        "marge",
        "grete",
    ],
    &["christina", "stien", "christien", "tina", "kristina", "christine", "tiny"],
    &["alexandra", "xandra", "lexa"],
    &["susanna", "suus", "suzanne", "susan", "sue", "suzy", "susanne"],
    &["francisca", "cisca", "fransje", "francien", "francine"],
    &["jennifer", "jen", "jenny", "jennie"],
    &["patricia", "pat", "patty", "trish", "patrice"],
    &["rebecca", "becky", "bekkie", "becca"],
    &["victoria", "vicky", "tori", "vicki"],
    &["jessica", "jess", "jessie"],
    &["abigail", "abby", "abbie"],
    &["deborah", "deb", "debbie", "debora"],
    &["anna", "anne", "ans", "annet", "annette", "ann"],
    &["helena", "lenie", "leny", "heleen", "helen", "lena", "hellen"],
    &["gerda", "gerdien", "gerdina", "gerritje", "dina"],
    &["geertruda", "geert-ruda"],
];

/// Every known given name (nickname groups and common names), and each of their one-letter
/// deletions, for typo correction in the way of SymSpell: two words one edit apart share a
/// deletion (or one is a deletion of the other).
fn deletion_index() -> &'static std::collections::HashMap<String, Vec<&'static str>> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<String, Vec<&'static str>>> =
        std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index: std::collections::HashMap<String, Vec<&'static str>> = std::collections::HashMap::new();
        let names = NICKNAMES.iter().flat_map(|g| g.iter().copied()).chain(COMMON_FIRST_NAMES.iter().copied());
        for name in names.filter(|n| n.len() >= 4) {
            for key in deletions(name).into_iter().chain([name.to_string()]) {
                let entry = index.entry(key).or_default();
                if !entry.contains(&name) {
                    entry.push(name);
                }
            }
        }
        index
    })
}

/// Every known given name with the roots of the nickname groups it belongs to (a common
/// name outside the groups is its own root). Looked up per candidate pair by the rules'
/// first-name checks, so a map instead of a scan of the lists.
fn roots_index() -> &'static std::collections::HashMap<&'static str, Vec<&'static str>> {
    static INDEX: std::sync::OnceLock<std::collections::HashMap<&'static str, Vec<&'static str>>> =
        std::sync::OnceLock::new();
    INDEX.get_or_init(|| {
        let mut index: std::collections::HashMap<&'static str, Vec<&'static str>> = std::collections::HashMap::new();
        for group in NICKNAMES {
            for name in group.iter() {
                let roots = index.entry(name).or_default();
                if !roots.contains(&group[0]) {
                    roots.push(group[0]);
                }
            }
        }
        for name in COMMON_FIRST_NAMES {
            index.entry(name).or_insert_with(|| vec![name]);
        }
        index
    })
}

fn longest_known_name() -> usize {
    static LONGEST: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LONGEST.get_or_init(|| {
        NICKNAMES.iter().flat_map(|g| g.iter()).chain(COMMON_FIRST_NAMES).map(|n| n.chars().count()).max().unwrap_or(0)
    })
}

fn deletions(word: &str) -> Vec<String> {
    let chars: Vec<char> = word.chars().collect();
    (0..chars.len()).map(|i| chars.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, c)| *c).collect()).collect()
}

/// The known names a spelling stands for: itself when known, else those a single typing
/// error away (`Hasn` -> `hans`, `Mikee` -> `mieke` or `mike`).
fn corrections(word: &str) -> Vec<&'static str> {
    if let Some((known, _)) = roots_index().get_key_value(word) {
        return vec![known];
    }
    let index = deletion_index();
    // One edit from a known name means at most one letter longer; checking that first
    // keeps the work linear in the word (its deletions are quadratic).
    if word.len() < 4 || word.chars().count() > longest_known_name() + 1 {
        return Vec::new();
    }
    let mut found: Vec<&'static str> = Vec::new();
    for key in deletions(word).iter().map(String::as_str).chain([word]) {
        for name in index.get(key).into_iter().flatten() {
            if super::similarity::damerau_levenshtein(name, word) <= 1 && !found.contains(name) {
                found.push(name);
            }
        }
    }
    found.sort();
    found
}

/// The one known name a spelling stands for, when there is exactly one.
fn corrected(word: &str) -> Option<&'static str> {
    let found = corrections(word);
    (found.len() == 1).then(|| found[0])
}

/// Roots of the nickname groups a name belongs to (Nel is short for Cornelia and for
/// Petronella); the name itself when it is in none.
fn name_roots(word: &str) -> Vec<String> {
    match roots_index().get(word) {
        Some(roots) => roots.iter().map(|r| r.to_string()).collect(),
        None => vec![word.to_string()],
    }
}

/// The root of a first name's nickname group (`Hans`, `Jan`, `Johannes` -> `johannes`),
/// after correcting a single typing error against the known names; the folded first given
/// name when it has none, and the initial for initials.
pub fn first_name_root(raw: &str) -> Option<String> {
    let words = name_words(raw);
    let first = words.first()?;
    if is_initials(raw) {
        return first.chars().next().map(String::from);
    }
    let spelled = corrected(first).unwrap_or(first);
    name_roots(spelled).into_iter().next()
}

/// The primary Double Metaphone code of a name (Lawrence Philips' algorithm, as Apache
/// Commons Codec has it): a phonetic key for names of English and other European
/// origins, where `dutch_phonetic` knows Dutch spelling only. `Matson` and `Matosn`,
/// `Mestrov` and `Mestrv` share a key. The name is folded first (accents, case, spaces).
pub fn double_metaphone(raw: &str) -> Option<String> {
    static ENCODER: std::sync::LazyLock<rphonetic::DoubleMetaphone> =
        std::sync::LazyLock::new(rphonetic::DoubleMetaphone::default);
    let folded = fold_name(raw)?;
    let code = rphonetic::Encoder::encode(&*ENCODER, &folded);
    (!code.is_empty()).then_some(code)
}

/// A phonetic key for Dutch surnames and first names: particles dropped, then the spelling
/// variants that sound alike folded (`ij`/`y`/`ei`, `sch`/`s`, `ch`/`g`, `dt`/`d`/`t` at the
/// end, `ph`/`f`, `v`/`f`, `z`/`s`, `c`/`k`, double letters). `Jansen`, `Janssen` and
/// `Janszen` share a key, as do `de Vries` and `Fries`. Written for Dutch because Soundex
/// and Metaphone encode English pronunciation.
pub fn dutch_phonetic(raw: &str) -> Option<String> {
    let core = strip_particles(raw)?;
    let mut s = core;
    const RULES: &[(&str, &str)] = &[
        ("sch", "s"),
        ("ph", "f"),
        ("th", "t"),
        ("ch", "g"),
        ("ck", "k"),
        ("qu", "kw"),
        ("ij", "y"),
        ("ei", "y"),
        ("ey", "y"),
        ("ie", "i"),
        ("oe", "u"),
        ("ou", "au"),
        ("ae", "a"),
        ("aa", "a"),
        ("ee", "e"),
        ("oo", "o"),
        ("uu", "u"),
        ("dt", "t"),
        ("ks", "x"),
        ("cs", "x"),
        ("tz", "s"),
        ("sz", "s"),
        ("z", "s"),
        ("v", "f"),
        ("w", "v"),
        ("q", "k"),
        ("x", "ks"),
    ];
    for (from, to) in RULES {
        // Most rules do not apply to a name: only those that do allocate a new string. The
        // rules are one to three letters, compared byte by byte: a slice comparison per
        // window called `memcmp`, which was most of this function's time.
        if s.as_bytes().windows(from.len()).any(|w| w.iter().zip(from.as_bytes()).all(|(a, b)| a == b)) {
            s = s.replace(from, to);
        }
    }
    // `c` sounds as `s` before e/i/y and as `k` elsewhere.
    let chars: Vec<char> = s.chars().collect();
    let mut out = String::with_capacity(chars.len());
    for (i, c) in chars.iter().enumerate() {
        let next = chars.get(i + 1);
        let mapped = match c {
            'c' if matches!(next, Some('e' | 'i' | 'y')) => 's',
            'c' => 'k',
            'd' if next.is_none() => 't',
            'h' if i > 0 => continue,
            other => *other,
        };
        if !out.ends_with(mapped) {
            out.push(mapped);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Whether two first names can belong to one person: same nickname root, one is an
/// initial of the other, or a typo apart (Jaro-Winkler of the folded names >= 0.9).
/// `None` when either is missing: absence is neither agreement nor conflict.
///
/// The rules ask this for every candidate pair, hundreds of thousands of times over a few
/// thousand names: each thread remembers the pairs it has answered.
pub fn first_names_compatible(a: &str, b: &str) -> Option<bool> {
    thread_local! {
        static ANSWERED: std::cell::RefCell<super::memo::PairMemo<Option<bool>>> = Default::default();
    }
    super::memo::PairMemo::get_or(&ANSWERED, a, b, || names_compatible(a, b))
}

fn names_compatible(a: &str, b: &str) -> Option<bool> {
    let (wa, wb) = (name_words(a), name_words(b));
    let (fa, fb) = (wa.first()?, wb.first()?);
    let (ia, ib) = (is_initials(a), is_initials(b));
    let roots_of = |w: &str| -> Vec<String> {
        let found = corrections(w);
        if found.is_empty() { name_roots(w) } else { found.iter().flat_map(|n| name_roots(n)).collect() }
    };
    match (ia, ib) {
        (true, true) => return Some(fa.chars().next() == fb.chars().next()),
        (true, false) | (false, true) => {
            // An initial stands for the name or for its root (`C.` for Kees = Cornelis).
            let (initial, full) = if ia { (fa, fb) } else { (fb, fa) };
            let letter = initial.chars().next();
            let letters: Vec<Option<char>> =
                std::iter::once(full.chars().next()).chain(roots_of(full).iter().map(|r| r.chars().next())).collect();
            return Some(letters.contains(&letter));
        }
        (false, false) => {}
    }
    let (ra, rb) = (roots_of(fa), roots_of(fb));
    if ra.iter().any(|r| rb.contains(r)) {
        return Some(true);
    }
    // Two known names (or typos of known names) with no root in common are two people
    // (Johannes and Johanna); only an unknown spelling may still be a variant.
    let (ka, kb) = (!corrections(fa).is_empty(), !corrections(fb).is_empty());
    if ka && kb {
        return Some(false);
    }
    let (xa, xb) = (fold_name(a)?, fold_name(b)?);
    let one_typo = xa.len().min(xb.len()) >= 3 && super::similarity::damerau_levenshtein(&xa, &xb) <= 1;
    Some(one_typo || super::similarity::jaro_winkler(&xa, &xb) >= 0.88)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn double_metaphone_keys_survive_english_typos() {
        let key = |s| double_metaphone(s).unwrap();
        assert_eq!(key("Matson"), key("matosn"));
        assert_eq!(key("Mestrov"), key("mestrv"));
        assert_eq!(key("Smith"), key("Smyth"));
        assert_ne!(key("Coleman"), key("Mason"));
        assert_eq!(double_metaphone(" "), None);
    }

    #[test]
    fn a_huge_word_is_not_corrected_and_costs_little() {
        // Its deletions alone would be 25 TB: the test only finishes when they are skipped.
        let huge = "a".repeat(5_000_000);
        assert!(corrections(&huge).is_empty());
        assert_eq!(corrections("hasn"), ["hans"]);
    }

    #[test]
    fn particles_in_any_position_fold_alike() {
        let forms = ["de Vries", "Vries, de", "devries", "De  Vries", "DE VRIES", "de Vriés"];
        for f in forms {
            assert_eq!(fold_name(f).as_deref(), Some("devries"), "{f:?}");
        }
        assert_eq!(fold_name("v.d. Berg"), fold_name("van der Berg"));
        assert_eq!(fold_name("vd Berg"), fold_name("Van Der Berg"));
        assert_eq!(fold_name("'t Hart").as_deref(), Some("thart"));
        assert_eq!(fold_name("  "), None);
    }

    #[test]
    fn stripping_particles() {
        assert_eq!(strip_particles("van der Berg").as_deref(), Some("berg"));
        assert_eq!(strip_particles("Berg, van den").as_deref(), Some("berg"));
        assert_eq!(strip_particles("Müller-Lüdenscheidt").as_deref(), Some("mullerludenscheidt"));
        assert_eq!(strip_particles("Van").as_deref(), Some("van"));
    }

    #[test]
    fn splitting_one_field_names() {
        assert_eq!(split_full_name("Jan de Vries"), (Some("Jan".into()), Some("de Vries".into())));
        assert_eq!(split_full_name("J. van der Berg"), (Some("J.".into()), Some("van der Berg".into())));
        assert_eq!(split_full_name("Jan Willem Bakker"), (Some("Jan Willem".into()), Some("Bakker".into())));
        assert_eq!(split_full_name("Vries, Jan de"), (Some("Jan".into()), Some("de Vries".into())));
        assert_eq!(split_full_name("Bakker"), (None, Some("Bakker".into())));
        assert_eq!(split_full_name("Hanneke"), (Some("Hanneke".into()), None));
        assert_eq!(split_full_name("dhr. de Vries"), (None, Some("de Vries".into())));
        assert_eq!(split_full_name("Mevr. Jansen"), (None, Some("Jansen".into())));
        assert_eq!(split_full_name("  "), (None, None));
    }

    #[test]
    fn nicknames_and_initials() {
        assert_eq!(first_name_root("Hans").as_deref(), Some("johannes"));
        assert_eq!(first_name_root("JOHANNES").as_deref(), Some("johannes"));
        assert_eq!(first_name_root("Kees").as_deref(), Some("cornelis"));
        assert_eq!(first_name_root("Bill").as_deref(), Some("wilhelmus"));
        assert_eq!(first_name_root("J.").as_deref(), Some("j"));
        assert_eq!(first_name_root("J.W.").as_deref(), Some("j"));
        assert_eq!(first_name_root("Sophie").as_deref(), Some("sophie"));
        assert_eq!(first_name_root("Hasn").as_deref(), Some("johannes"));
        assert_ne!(first_name_root("Johanna"), first_name_root("Johannes"));
        assert!(is_initials("J."));
        assert!(is_initials("JW"));
        assert!(!is_initials("Jan"));
        assert!(!is_initials("Anna Maria"));
        assert_eq!(name_initial("  émile").as_deref(), Some("e"));
    }

    #[test]
    fn first_name_compatibility() {
        assert_eq!(first_names_compatible("Johannes", "Hans"), Some(true));
        assert_eq!(first_names_compatible("J.", "Jan"), Some(true));
        assert_eq!(first_names_compatible("Jan", "Jna"), Some(true));
        assert_eq!(first_names_compatible("Jan-Willem", "Jan"), Some(true));
        assert_eq!(first_names_compatible("Jan", "Marie"), Some(false));
        assert_eq!(first_names_compatible("M.", "Jan"), Some(false));
        assert_eq!(first_names_compatible("Johannes", "Johanna"), Some(false));
        assert_eq!(first_names_compatible("", "Jan"), None);
        // Typos of nicknames, and nicknames of two names.
        assert_eq!(first_names_compatible("Hasn", "Johannes"), Some(true));
        assert_eq!(first_names_compatible("Mikee", "Maria"), Some(true));
        assert_eq!(first_names_compatible("Nel", "Cornelia"), Some(true));
        assert_eq!(first_names_compatible("Nel", "Petronella"), Some(true));
        assert_eq!(first_names_compatible("Cornelia", "Petronella"), Some(false));
        assert_eq!(first_names_compatible("C.", "Kees"), Some(true));
        assert_eq!(first_names_compatible("Wimla", "Wilhelmina"), Some(true));
    }

    #[test]
    fn phonetic_key_for_spelling_variants() {
        let key = |s| dutch_phonetic(s).unwrap();
        assert_eq!(key("Jansen"), key("Janssen"));
        assert_eq!(key("Janszen"), key("Jansen"));
        assert_eq!(key("de Vries"), key("Fries"));
        assert_eq!(key("Meijer"), key("Meyer"));
        assert_eq!(key("Schmidt"), key("Smit"));
        assert_eq!(key("van der Heijden"), key("vd Heyden"));
        assert_eq!(key("Claassen"), key("Klaasen"));
        assert_ne!(key("Bakker"), key("Visser"));
        assert_eq!(dutch_phonetic(""), None);
    }
}
