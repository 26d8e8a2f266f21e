//! The made-up population: people in households, and the records each source system
//! holds about them, with the dirt real systems have.

use std::collections::{HashMap, HashSet};

use chrono::{Duration, NaiveDate, NaiveDateTime};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;

use super::names::{FEMALE, MAIL_DOMAINS, MALE, PLACES, STREETS, SURNAMES};
use super::noise::{self, Profile};

#[derive(Debug, Clone)]
pub struct Address {
    pub street: &'static str,
    pub number: u16,
    pub addition: Option<char>,
    pub postcode: String,
    pub city: &'static str,
}

#[derive(Debug, Clone)]
pub struct Person {
    pub id: u32,
    pub first: &'static str,
    pub nicknames: &'static [&'static str],
    pub particle: &'static str,
    pub surname: &'static str,
    pub birth: NaiveDate,
    pub email: String,
    pub work_email: Option<String>,
    /// National significant number, e.g. `612345678`.
    pub mobile: Option<String>,
    pub household: usize,
    pub old_address: Option<Address>,
}

#[derive(Debug, Clone)]
pub struct Household {
    pub address: Address,
    pub landline: Option<String>,
    pub shared_email: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Crm {
    pub klant_id: String,
    pub person: u32,
    pub voornaam: Option<String>,
    pub tussenvoegsel: Option<String>,
    pub achternaam: Option<String>,
    pub email: Option<String>,
    pub telefoon: Option<String>,
    pub straat: Option<String>,
    pub huisnummer: Option<String>,
    pub postcode: Option<String>,
    pub woonplaats: Option<String>,
    pub geboortedatum: Option<String>,
    pub gewijzigd_op: String,
}

#[derive(Debug, Clone)]
pub struct Account {
    pub account_id: String,
    pub person: u32,
    pub email: String,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone: Option<String>,
    pub created_at: String,
    pub newsletter_optin: bool,
}

#[derive(Debug, Clone)]
pub struct Card {
    pub card_number: String,
    pub person: u32,
    pub full_name: Option<String>,
    pub postcode: Option<String>,
    pub phone: Option<String>,
    pub enrolled_on: String,
}

#[derive(Debug, Clone)]
pub struct Ticket {
    pub ticket_id: String,
    pub person: u32,
    pub caller_name: Option<String>,
    pub caller_email: Option<String>,
    pub caller_phone: Option<String>,
    pub opened_at: String,
    pub topic: &'static str,
    pub csat: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub subscriber_id: String,
    pub person: u32,
    pub email: String,
    pub first_name: Option<String>,
    pub subscribed_at: String,
}

/// Everything the generator made, before it is written.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub persons: Vec<Person>,
    pub households: Vec<Household>,
    pub crm: Vec<Crm>,
    pub accounts: Vec<Account>,
    pub cards: Vec<Card>,
    pub tickets: Vec<Ticket>,
    pub subscribers: Vec<Subscriber>,
    pub as_of: NaiveDate,
    pub profile: Profile,
    used_emails: HashSet<String>,
    used_phones: HashSet<String>,
    used_addresses: HashSet<String>,
    /// The last number given to a numbered mailbox (`base{n}@domain`), so the next one
    /// starts there: common names would otherwise try every taken number again, which
    /// grows with the square of the people count.
    mailbox_numbers: HashMap<String, u32>,
    /// Company mailboxes that several unrelated people type in (`info@...`).
    company_emails: Vec<String>,
}

/// Picks from a list with Zipf-like weights: the first entries are far more common.
fn zipf<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    let n = items.len() as f64;
    // Inverse CDF of a continuous 1/x^0.9 law over [1, n+1).
    let u: f64 = rng.random();
    let s = 0.9;
    let max = (n + 1.0).powf(1.0 - s);
    let x = (1.0 + u * (max - 1.0)).powf(1.0 / (1.0 - s));
    let i = (x as usize).saturating_sub(1).min(items.len() - 1);
    &items[i]
}

fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    rng.random::<f64>() < p
}

fn ts(dt: NaiveDateTime) -> String {
    dt.format("%Y-%m-%dT%H:%M:%S").to_string()
}

impl World {
    pub fn new(as_of: NaiveDate, profile: Profile) -> World {
        World { as_of, profile, ..Default::default() }
    }

    fn random_time_before(&self, rng: &mut ChaCha8Rng, max_days: i64) -> NaiveDateTime {
        let days = rng.random_range(0..max_days.max(1));
        let secs = rng.random_range(0..86_400);
        self.as_of.and_hms_opt(0, 0, 0).expect("midnight") - Duration::days(days) + Duration::seconds(secs)
    }

    fn unique_mobile(&mut self, rng: &mut ChaCha8Rng) -> String {
        loop {
            // Dutch mobile numbers are 06-1.. to 06-5.. (06-6 is for pagers, 06-7 free).
            let n = format!("6{}{:07}", rng.random_range(1..6u32), rng.random_range(0..10_000_000u32));
            if self.used_phones.insert(n.clone()) {
                return n;
            }
        }
    }

    fn unique_landline(&mut self, rng: &mut ChaCha8Rng, area: u16) -> String {
        loop {
            let n = format!("{}{:07}", area_code(area), rng.random_range(2_000_000..9_999_999u32));
            if self.used_phones.insert(n.clone()) {
                return n;
            }
        }
    }

    fn new_address(&mut self, rng: &mut ChaCha8Rng) -> Address {
        loop {
            let (city, pc2) = *PLACES.choose(rng).expect("places");
            let postcode = format!(
                "{:02}{:02}{}{}",
                pc2,
                rng.random_range(0..100),
                (b'A' + rng.random_range(0..26u8)) as char,
                (b'A' + rng.random_range(0..26u8)) as char
            );
            let number = rng.random_range(1..250);
            let addition = chance(rng, 0.1).then(|| (b'a' + rng.random_range(0..4u8)) as char);
            let key = format!("{postcode}{number}{addition:?}");
            if self.used_addresses.insert(key) {
                let street = *STREETS.choose(rng).expect("streets");
                return Address { street, number, addition, postcode, city };
            }
        }
    }

    /// A personal mailbox built from the name, unique in the world.
    fn unique_email(
        &mut self,
        rng: &mut ChaCha8Rng,
        first: &str,
        particle: &str,
        surname: &str,
        birth: NaiveDate,
    ) -> String {
        let f = noise::ascii_lower(first);
        let s = noise::ascii_lower(&format!("{particle}{surname}")).replace(['\'', ' '], "");
        let base = match rng.random_range(0..6) {
            0 => format!("{f}.{s}"),
            1 => format!("{}.{s}", &f[..1]),
            2 => format!("{f}{s}"),
            3 => format!("{s}.{f}"),
            4 => format!("{f}{}", chrono::Datelike::year(&birth) % 100),
            _ => format!("{}{s}", &f[..1]),
        };
        let domain = *MAIL_DOMAINS.choose(rng).expect("domains");
        self.claim_numbered_mailbox(&base, domain)
    }

    /// Claims `base@domain`, or else `base{n}@domain` with the smallest free n from 2.
    fn claim_numbered_mailbox(&mut self, base: &str, domain: &str) -> String {
        let numbered = format!("{base}@{domain}");
        // Every number up to the last one given out is taken (claims are never undone).
        let mut n = self.mailbox_numbers.get(&numbered).copied().unwrap_or(0);
        loop {
            n += 1;
            let candidate = if n == 1 { numbered.clone() } else { format!("{base}{n}@{domain}") };
            if self.claim_mailbox(&candidate) {
                if n > 1 {
                    self.mailbox_numbers.insert(numbered, n);
                }
                return candidate;
            }
        }
    }

    /// Claims a mailbox; false when it (or a spelling the mail server treats as the same,
    /// such as Gmail's dots) is taken.
    fn claim_mailbox(&mut self, email: &str) -> bool {
        let key = crate::udf::normalize_email(email).unwrap_or_else(|| email.to_string());
        self.used_emails.insert(key)
    }

    /// Adds `count` people in households, with ids from `first_id`.
    pub fn add_people(&mut self, rng: &mut ChaCha8Rng, count: usize, first_id: u32) {
        if self.company_emails.is_empty() {
            for c in [
                "info@bakkerijdevries.nl",
                "info@autobedrijf-jansen.nl",
                "administratie@kantoorvisser.nl",
                "info@kapsalon-anna.nl",
            ] {
                self.company_emails.push(c.to_string());
            }
        }
        let mut made = 0;
        while made < count {
            let size = match rng.random_range(0..100) {
                0..40 => 1,
                40..75 => 2,
                75..90 => 3,
                _ => 4,
            }
            .min(count - made);
            let address = self.new_address(rng);
            let area = address.postcode[..2].parse().unwrap_or(10);
            let landline = chance(rng, 0.35).then(|| self.unique_landline(rng, area));
            let (particle, surname) = *zipf(rng, SURNAMES);
            let household = self.households.len();
            let shared_email = (size > 1 && chance(rng, 0.12)).then(|| {
                let s = noise::ascii_lower(&format!("{particle}{surname}")).replace(['\'', ' '], "");
                let domain = *MAIL_DOMAINS.choose(rng).expect("domains");
                self.claim_numbered_mailbox(&format!("fam.{s}"), domain)
            });
            self.households.push(Household { address, landline, shared_email });
            let parent_year = rng.random_range(1940..2000);
            let mut names_in_house: Vec<&str> = Vec::new();
            for member in 0..size {
                let male = chance(rng, 0.5);
                // Parents rarely give a child their own first name.
                let (first, nicknames) = loop {
                    let pick = *zipf(rng, if male { MALE } else { FEMALE });
                    let root = crate::udf::first_name_root(pick.0);
                    if !names_in_house.iter().any(|n| crate::udf::first_name_root(n) == root) {
                        break pick;
                    }
                };
                names_in_house.push(first);
                let year = if member < 2 {
                    parent_year + rng.random_range(0..4)
                } else {
                    parent_year + rng.random_range(22..34)
                };
                let birth = NaiveDate::from_ymd_opt(year.min(2006), rng.random_range(1..13), rng.random_range(1..29))
                    .expect("valid date");
                // Partners sometimes keep their own surname.
                let (p, s) = if member == 1 && chance(rng, 0.4) { *zipf(rng, SURNAMES) } else { (particle, surname) };
                let email = self.unique_email(rng, first, p, s, birth);
                let work_email = chance(rng, 0.12).then(|| {
                    let f = noise::ascii_lower(first);
                    let sur = noise::ascii_lower(s).replace(['\'', ' '], "");
                    let e = format!("{}.{sur}@werk{}.nl", &f[..1], rng.random_range(1..400));
                    if self.claim_mailbox(&e) {
                        return e;
                    }
                    // A common name can take every employer's mailbox at millions of
                    // people: a few random tries, then a numbered one.
                    for _ in 0..100 {
                        let e = format!("{f}.{sur}@werk{}.nl", rng.random_range(1..4000));
                        if self.claim_mailbox(&e) {
                            return e;
                        }
                    }
                    self.claim_numbered_mailbox(&format!("{f}.{sur}"), "werk.nl")
                });
                let mobile = chance(rng, 0.92).then(|| self.unique_mobile(rng));
                let old_address = chance(rng, 0.1).then(|| self.new_address(rng));
                let id = first_id + made as u32;
                self.persons.push(Person {
                    id,
                    first,
                    nicknames,
                    particle: p,
                    surname: s,
                    birth,
                    email,
                    work_email,
                    mobile,
                    household,
                    old_address,
                });
                made += 1;
            }
        }
    }
}

/// Area code digits (without the 0) for a postcode region.
fn area_code(pc2: u16) -> &'static str {
    match pc2 {
        10..=15 => "20",
        30..=33 => "10",
        25..=26 => "70",
        35..=38 => "30",
        50..=56 => "40",
        97 => "50",
        _ => "38",
    }
}

/// Counters for record keys, kept across days so new records get new keys.
#[derive(Debug, Clone, Default)]
pub struct Keys {
    pub crm: u32,
    pub account: u32,
    pub card: u32,
    pub ticket: u32,
    pub subscriber: u32,
}

impl World {
    fn name_for(&self, rng: &mut ChaCha8Rng, p: &Person, nickname_p: f64, initial_p: f64) -> String {
        let (nickname_p, initial_p) = (nickname_p * self.profile.nicknames(), initial_p * self.profile.nicknames());
        let first = if chance(rng, initial_p) {
            format!("{}.", &p.first[..1])
        } else if !p.nicknames.is_empty() && chance(rng, nickname_p) {
            p.nicknames.choose(rng).expect("nicknames").to_string()
        } else {
            p.first.to_string()
        };
        if chance(rng, 0.03 * self.profile.typos()) { noise::typo(rng, &first) } else { first }
    }

    fn surname_for(&self, rng: &mut ChaCha8Rng, p: &Person, with_particle: bool) -> String {
        let s =
            if chance(rng, 0.02 * self.profile.typos()) { noise::typo(rng, p.surname) } else { p.surname.to_string() };
        if with_particle && !p.particle.is_empty() {
            let particle = if chance(rng, 0.15) { noise::capitalize(p.particle) } else { p.particle.to_string() };
            format!("{particle} {s}")
        } else {
            s
        }
    }

    /// The phone a person gives a system: own mobile, the household landline, a form
    /// filler's placeholder, or nothing.
    fn phone_for(&self, rng: &mut ChaCha8Rng, p: &Person, present_p: f64) -> Option<String> {
        if !chance(rng, present_p) {
            return None;
        }
        if chance(rng, 0.01) {
            return Some(["0600000000", "0612345678", "06-00000000"].choose(rng).expect("placeholders").to_string());
        }
        let landline = self.households[p.household].landline.clone();
        let digits = match (&p.mobile, landline) {
            (Some(m), Some(l)) => {
                if chance(rng, 0.75) {
                    m.clone()
                } else {
                    l
                }
            }
            (Some(m), None) => m.clone(),
            (None, Some(l)) => l,
            (None, None) => return None,
        };
        if self.profile == Profile::Formats && chance(rng, 0.5) {
            return Some(noise::phone_format_other(rng, &digits));
        }
        Some(noise::phone_format(rng, &digits))
    }

    /// Whether this record has its name fields the wrong way round.
    fn swaps_names(&self, rng: &mut ChaCha8Rng) -> bool {
        self.profile.swapped() > 0.0 && chance(rng, self.profile.swapped())
    }

    /// The e-mail a person gives a system: own, work, the family mailbox, a company's
    /// shared mailbox, with typing variation.
    fn email_for(&self, rng: &mut ChaCha8Rng, p: &Person) -> String {
        let h = &self.households[p.household];
        let r: f64 = rng.random();
        let e = match (&h.shared_email, &p.work_email) {
            (Some(shared), _) if r < 0.08 => shared.clone(),
            (_, Some(work)) if (0.08..0.16).contains(&r) => work.clone(),
            _ if (0.16..0.165).contains(&r) => self.company_emails.choose(rng).expect("companies").clone(),
            _ => p.email.clone(),
        };
        noise::email_variant(rng, &e, self.profile.typos())
    }

    fn address_for(&self, rng: &mut ChaCha8Rng, p: &Person) -> Address {
        match &p.old_address {
            Some(old) if chance(rng, 0.5) => old.clone(),
            _ => self.households[p.household].address.clone(),
        }
    }

    fn crm_record(&self, rng: &mut ChaCha8Rng, p: &Person, key: u32) -> Crm {
        let split_particle = chance(rng, 0.85);
        let a = self.address_for(rng, p);
        let birth = chance(rng, 0.85).then(|| {
            let d = if chance(rng, 0.02 * self.profile.typos()) { noise::date_typo(rng, p.birth) } else { p.birth };
            if self.profile == Profile::Formats && chance(rng, 0.5) {
                noise::date_format_other(rng, d)
            } else if chance(rng, 0.3) {
                d.format("%d-%m-%Y").to_string()
            } else {
                d.format("%Y-%m-%d").to_string()
            }
        });
        let voornaam = self.name_for(rng, p, 0.1, 0.15);
        let achternaam = self.surname_for(rng, p, !split_particle);
        let (voornaam, achternaam) =
            if self.swaps_names(rng) { (achternaam, voornaam) } else { (voornaam, achternaam) };
        let mut email = chance(rng, 0.92).then(|| self.email_for(rng, p));
        let mut telefoon = self.phone_for(rng, p, 0.85);
        // The CRM asks for a way to reach the customer; few contacts have none.
        if email.is_none() && telefoon.is_none() && chance(rng, 0.8) {
            if chance(rng, 0.5) {
                email = Some(self.email_for(rng, p));
            } else {
                telefoon = self.phone_for(rng, p, 1.0);
            }
        }
        Crm {
            klant_id: format!("C{key:07}"),
            person: p.id,
            voornaam: Some(noise::case_noise(rng, &voornaam)),
            tussenvoegsel: (split_particle && !p.particle.is_empty()).then(|| p.particle.to_string()),
            achternaam: Some(noise::case_noise(rng, &achternaam)),
            email,
            telefoon,
            straat: chance(rng, 0.95).then(|| a.street.to_string()),
            huisnummer: Some(noise::house_number(rng, a.number, a.addition)),
            postcode: chance(rng, self.profile.postcode_present(0.97))
                .then(|| noise::postcode_format(rng, &a.postcode)),
            woonplaats: chance(rng, 0.95).then(|| noise::case_noise(rng, a.city)),
            geboortedatum: birth,
            gewijzigd_op: ts(self.random_time_before(rng, 1500)),
        }
    }

    /// The systems' records for one person.
    pub fn add_records(&mut self, rng: &mut ChaCha8Rng, p: &Person, keys: &mut Keys) {
        // The CRM is the hub most customers end up in.
        if chance(rng, 0.7) {
            keys.crm += 1;
            let r = self.crm_record(rng, p, keys.crm);
            self.crm.push(r);
            // The CRM's own duplicates: the person entered again later.
            if chance(rng, 0.05) {
                keys.crm += 1;
                let r = self.crm_record(rng, p, keys.crm);
                self.crm.push(r);
            }
        }
        let accounts = if chance(rng, 0.45) { if chance(rng, 0.04) { 2 } else { 1 } } else { 0 };
        for _ in 0..accounts {
            keys.account += 1;
            let email = self.email_for(rng, p);
            let first = self.name_for(rng, p, 0.2, 0.02);
            let with_particle = chance(rng, 0.95);
            let last = self.surname_for(rng, p, with_particle);
            let (first, last) = if self.swaps_names(rng) { (last, first) } else { (first, last) };
            let phone = self.phone_for(rng, p, 0.7);
            let created = ts(self.random_time_before(rng, 2000));
            self.accounts.push(Account {
                account_id: format!("A{:07}", keys.account),
                person: p.id,
                email,
                first_name: chance(rng, 0.97).then(|| noise::case_noise(rng, &first)),
                last_name: chance(rng, 0.97).then(|| noise::case_noise(rng, &last)),
                phone,
                created_at: created,
                newsletter_optin: chance(rng, 0.4),
            });
        }
        if chance(rng, 0.35) {
            keys.card += 1;
            let first = self.name_for(rng, p, 0.1, 0.25);
            let last = self.surname_for(rng, p, true);
            let full = if chance(rng, 0.03) {
                let (particle, core) = (p.particle, self.surname_for(rng, p, false));
                if particle.is_empty() { format!("{core}, {first}") } else { format!("{core}, {first} {particle}") }
            } else if self.swaps_names(rng) {
                format!("{last} {first}")
            } else {
                format!("{first} {last}")
            };
            let a = self.address_for(rng, p);
            let phone = self.phone_for(rng, p, 0.9);
            self.cards.push(Card {
                card_number: format!("{}", 2_600_000_000u64 + keys.card as u64 * 7),
                person: p.id,
                full_name: chance(rng, 0.98).then(|| noise::case_noise(rng, &full)),
                postcode: chance(rng, self.profile.postcode_present(0.9))
                    .then(|| noise::postcode_format(rng, &a.postcode)),
                phone,
                enrolled_on: self.random_time_before(rng, 2500).date().format("%Y-%m-%d").to_string(),
            });
        }
        if chance(rng, 0.2) {
            for _ in 0..rng.random_range(1..4) {
                keys.ticket += 1;
                let name = match rng.random_range(0..10) {
                    0 => None,
                    1 => Some(self.name_for(rng, p, 0.3, 0.0)),
                    2 => Some(format!(
                        "{} {}",
                        if chance(rng, 0.5) { "dhr." } else { "mevr." },
                        self.surname_for(rng, p, true)
                    )),
                    _ => Some(format!("{} {}", self.name_for(rng, p, 0.3, 0.05), self.surname_for(rng, p, true))),
                };
                let mut email = chance(rng, 0.8).then(|| self.email_for(rng, p));
                let phone = self.phone_for(rng, p, 0.7);
                // A ticket is answered by mail or phone, so one of them is mostly there.
                if email.is_none() && phone.is_none() && chance(rng, 0.8) {
                    email = Some(self.email_for(rng, p));
                }
                let topic = *super::names::TOPICS.choose(rng).expect("topics");
                let csat = chance(rng, 0.6).then(|| rng.random_range(1..6));
                self.tickets.push(Ticket {
                    ticket_id: format!("T{:07}", keys.ticket),
                    person: p.id,
                    caller_name: name,
                    caller_email: email,
                    caller_phone: phone,
                    opened_at: ts(self.random_time_before(rng, 700)),
                    topic,
                    csat,
                });
            }
        }
        if chance(rng, 0.5) {
            keys.subscriber += 1;
            let email = self.email_for(rng, p);
            let first = chance(rng, 0.7).then(|| self.name_for(rng, p, 0.25, 0.0));
            self.subscribers.push(Subscriber {
                subscriber_id: format!("S{:07}", keys.subscriber),
                person: p.id,
                email,
                first_name: first,
                subscribed_at: ts(self.random_time_before(rng, 1800)),
            });
        }
    }

    /// Day two: a few per cent new people, some changed and some deleted records;
    /// everything else exactly as it was.
    pub fn next_day(&self, rng: &mut ChaCha8Rng, keys: &mut Keys) -> World {
        let mut w = self.clone();
        w.as_of = self.as_of + Duration::days(1);
        let newcomers = (self.persons.len() / 33).max(1);
        let first_id = self.persons.len() as u32 + 1;
        let before = w.persons.len();
        w.add_people(rng, newcomers, first_id);
        let new_people: Vec<Person> = w.persons[before..].to_vec();
        for p in &new_people {
            w.add_records(rng, p, keys);
        }
        let today = ts(w.as_of.and_hms_opt(6, 0, 0).expect("time"));
        // Changes: a new phone or e-mail in the CRM, a new address after a move. Records of
        // today's newcomers are left as they were made.
        let (persons, households) = (w.persons.clone(), w.households.clone());
        for r in w.crm.iter_mut().filter(|r| (r.person as usize) <= self.persons.len()) {
            if chance(rng, 0.02) {
                let p = &persons[r.person as usize - 1];
                match rng.random_range(0..3) {
                    0 => r.telefoon = p.mobile.as_ref().map(|m| noise::phone_format(rng, m)),
                    1 => r.email = Some(noise::email_variant(rng, &p.email, self.profile.typos())),
                    _ => {
                        let a = &households[p.household].address;
                        r.straat = Some(a.street.to_string());
                        r.huisnummer = Some(noise::house_number(rng, a.number, a.addition));
                        r.postcode = Some(noise::postcode_format(rng, &a.postcode));
                        r.woonplaats = Some(a.city.to_string());
                    }
                }
                r.gewijzigd_op = today.clone();
            }
        }
        for a in w.accounts.iter_mut().filter(|a| (a.person as usize) <= self.persons.len()) {
            if chance(rng, 0.01) {
                let p = &persons[a.person as usize - 1];
                a.phone = p.mobile.as_ref().map(|m| noise::phone_format(rng, m));
            }
        }
        // Deletions: closed accounts, cancelled cards, unsubscribed and removed people.
        w.crm.retain(|_| !chance(rng, 0.01));
        w.accounts.retain(|_| !chance(rng, 0.01));
        w.cards.retain(|_| !chance(rng, 0.01));
        w.subscribers.retain(|_| !chance(rng, 0.01));
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_mailboxes_take_the_smallest_free_number() {
        let mut world = World::new(NaiveDate::from_ymd_opt(2026, 11, 22).expect("date"), Profile::Base);
        assert!(world.claim_mailbox("jan3@example.nl"));
        let given: Vec<String> = (0..4).map(|_| world.claim_numbered_mailbox("jan", "example.nl")).collect();
        assert_eq!(given, ["jan@example.nl", "jan2@example.nl", "jan4@example.nl", "jan5@example.nl"]);
        // Gmail ignores dots: a dotted spelling of a taken mailbox is taken too.
        assert_eq!(world.claim_numbered_mailbox("j.an", "gmail.com"), "j.an@gmail.com");
        assert_eq!(world.claim_numbered_mailbox("jan", "gmail.com"), "jan2@gmail.com");
    }
}
