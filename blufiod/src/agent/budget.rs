//! Cost accounting and hard budget caps.
//!
//! Before a provider call is dispatched the turn reserves its worst case (estimated input at the
//! dearest input price plus `max_tokens` at the output price). A reservation succeeds only if
//! today's and this month's spend plus every open reservation plus this one stay within the
//! caps, checked and taken under one lock, so concurrent turns cannot overshoot a cap. The
//! reservation is settled with the real cost once the call ends. Day and month are UTC.
//!
//! This module never calls a provider and never writes the ledger; it only decides and counts.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use crate::agent::provider::Usage;
use crate::config::{BudgetConfig, ModelPrice};

/// Millionths of a US dollar: token counts times prices per million tokens are whole numbers of
/// these (up to rounding of fractional prices), and sums stay exact.
pub type Micros = i64;

/// Converts micro-dollars to dollars for display.
pub fn dollars(micros: Micros) -> f64 {
    micros as f64 / 1_000_000.0
}

fn to_micros(usd: f64) -> Micros {
    // Caps are configured in dollars; f64 holds cents exactly enough for this.
    (usd * 1_000_000.0).round() as Micros
}

/// The UTC day and month a moment belongs to, and when each ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Period {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// `YYYY-MM`.
    pub month: String,
    /// The next UTC midnight, RFC 3339.
    pub day_ends: String,
    /// The first instant of the next UTC month, RFC 3339.
    pub month_ends: String,
}

impl Period {
    /// The period containing `now`.
    pub fn of(now: OffsetDateTime) -> Self {
        let date = now.date();
        let next_day = date.next_day().unwrap_or(date);
        let (year, month) = (date.year(), u8::from(date.month()));
        let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        Self {
            day: format!("{year:04}-{month:02}-{:02}", date.day()),
            month: format!("{year:04}-{month:02}"),
            day_ends: format!(
                "{:04}-{:02}-{:02}T00:00:00Z",
                next_day.year(),
                u8::from(next_day.month()),
                next_day.day()
            ),
            month_ends: format!("{next_year:04}-{next_month:02}-01T00:00:00Z"),
        }
    }

    /// The period containing the present moment.
    pub fn now() -> Self {
        Self::of(OffsetDateTime::now_utc())
    }
}

/// Errors from pricing and budgets.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetError {
    /// The model has no price, so its cost cannot be bounded.
    #[error(
        "model {model:?} has no price, so blufio will not call it: add [pricing.\"{model}\"] with input and output prices (USD per million tokens; 0 for a free local model)"
    )]
    Unpriced {
        /// The model.
        model: String,
    },
    /// A cap is reached: what was spent and is held by calls in flight leaves nothing.
    #[error(
        "{which} budget exhausted until {until}: {} spent and {} reserved of {}; raise budget.{key} to allow more",
        usd(*spent),
        usd(*reserved),
        usd(*cap)
    )]
    Exhausted {
        /// `daily` or `monthly`.
        which: &'static str,
        /// The config key of the cap.
        key: &'static str,
        /// When the cap resets, RFC 3339.
        until: String,
        /// Spent in the period, dollars.
        spent: f64,
        /// Held by calls in flight, dollars.
        reserved: f64,
        /// The cap, dollars.
        cap: f64,
        /// This call's worst case, dollars.
        needed: f64,
    },
    /// Some of the cap is left, but less than this call's worst case (its input and
    /// `provider.max_tokens` of output at the model's price), which must be reserved up front.
    #[error(
        "this call could cost up to {} (its input and provider.max_tokens of output at the model's price), more than the {} left of the {which} budget of {} until {until}; lower provider.max_tokens, or raise budget.{key}",
        usd(*needed),
        usd(cap - spent - reserved),
        usd(*cap)
    )]
    TooCostly {
        /// `daily` or `monthly`.
        which: &'static str,
        /// The config key of the cap.
        key: &'static str,
        /// When the cap resets, RFC 3339.
        until: String,
        /// Spent in the period, dollars.
        spent: f64,
        /// Held by calls in flight, dollars.
        reserved: f64,
        /// The cap, dollars.
        cap: f64,
        /// This call's worst case, dollars.
        needed: f64,
    },
}

/// Dollars with as many decimals as a small amount needs (cents, down to a micro-dollar), so
/// that a small cap never reads as "$0.00".
pub fn usd(dollars: f64) -> String {
    let cents = format!("{dollars:.2}");
    let exact = cents
        .parse::<f64>()
        .is_ok_and(|rounded| (rounded - dollars).abs() < 5e-7);
    if exact || dollars.abs() >= 100.0 {
        return format!("${cents}");
    }
    let fine = format!("{dollars:.6}");
    let trimmed = fine.trim_end_matches('0');
    if trimmed.split_once('.').is_some_and(|(_, decimals)| decimals.len() >= 2) {
        format!("${trimmed}")
    } else {
        format!("${cents}")
    }
}

/// Cost of `usage` under `price`, in micro-dollars, rounded up.
pub fn cost_of(usage: &Usage, price: &ModelPrice) -> Micros {
    let tokens = |count: u64| count as f64;
    let micros = tokens(usage.input_tokens) * price.input
        + tokens(usage.output_tokens) * price.output
        + tokens(usage.cache_creation_input_tokens) * price.cache_write.unwrap_or(price.input)
        + tokens(usage.cache_read_input_tokens) * price.cache_read.unwrap_or(price.input);
    micros.ceil() as Micros
}

/// The worst-case cost of a call: `input_tokens` at the dearest input price (a cache write may
/// cost more than plain input) plus `max_tokens` of output.
pub fn worst_case(input_tokens: u64, max_tokens: u32, price: &ModelPrice) -> Micros {
    let input_price = price.input.max(price.cache_write.unwrap_or(price.input));
    (input_tokens as f64 * input_price + f64::from(max_tokens) * price.output).ceil() as Micros
}

/// Looks up a model's price.
pub fn price_of<'a>(pricing: &'a BTreeMap<String, ModelPrice>, model: &str) -> Result<&'a ModelPrice, BudgetError> {
    pricing.get(model).ok_or_else(|| BudgetError::Unpriced {
        model: model.to_owned(),
    })
}

/// Spend against the caps, in memory, loaded from the ledger at startup.
#[derive(Debug)]
pub struct Budget {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    day: String,
    month: String,
    spent_day: Micros,
    spent_month: Micros,
    reserved: Micros,
}

/// A snapshot for status and usage reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSnapshot {
    /// Spent today, dollars.
    pub today_usd: f64,
    /// Spent this month, dollars.
    pub month_usd: f64,
    /// Held by calls in flight, dollars.
    pub reserved_usd: f64,
}

/// Money held for one call until it is settled. Dropping it unsettled releases it.
#[derive(Debug)]
#[must_use = "a reservation must be settled with the call's real cost"]
pub struct Reservation<'a> {
    budget: &'a Budget,
    micros: Micros,
    period: Period,
}

impl Budget {
    /// A budget that has already spent `spent_day` today and `spent_month` this month.
    pub fn new(period: &Period, spent_day: Micros, spent_month: Micros) -> Self {
        Self {
            state: Mutex::new(State {
                day: period.day.clone(),
                month: period.month.clone(),
                spent_day,
                spent_month,
                reserved: 0,
            }),
        }
    }

    /// Starts over from spend read again (after a restore), with no reservation in flight.
    pub fn reset(&self, period: &Period, spent_day: Micros, spent_month: Micros) {
        *self.lock() = State {
            day: period.day.clone(),
            month: period.month.clone(),
            spent_day,
            spent_month,
            reserved: 0,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("budget lock poisoned")
    }

    /// Reserves `micros` in `period` under `caps`, or says which cap forbids it.
    pub fn reserve(
        &self,
        micros: Micros,
        caps: &BudgetConfig,
        period: &Period,
    ) -> Result<Reservation<'_>, BudgetError> {
        let mut state = self.lock();
        state.roll_to(period);
        let checks = [
            ("daily", "daily_usd", caps.daily_usd, state.spent_day, &period.day_ends),
            (
                "monthly",
                "monthly_usd",
                caps.monthly_usd,
                state.spent_month,
                &period.month_ends,
            ),
        ];
        for (which, key, cap, spent, until) in checks {
            // A cap of 0 means "no cap".
            if cap > 0.0 && spent + state.reserved + micros > to_micros(cap) {
                let (spent, reserved, needed) = (dollars(spent), dollars(state.reserved), dollars(micros));
                let until = until.clone();
                return Err(if spent + reserved >= cap {
                    BudgetError::Exhausted {
                        which,
                        key,
                        until,
                        spent,
                        reserved,
                        cap,
                        needed,
                    }
                } else {
                    BudgetError::TooCostly {
                        which,
                        key,
                        until,
                        spent,
                        reserved,
                        cap,
                        needed,
                    }
                });
            }
        }
        state.reserved += micros;
        Ok(Reservation {
            budget: self,
            micros,
            period: period.clone(),
        })
    }

    /// Whether any call could be made now: both caps leave room for at least `micros`.
    pub fn check(&self, micros: Micros, caps: &BudgetConfig, period: &Period) -> Result<(), BudgetError> {
        self.reserve(micros, caps, period).map(drop)
    }

    /// Spend and reservations now.
    pub fn snapshot(&self, period: &Period) -> BudgetSnapshot {
        let mut state = self.lock();
        state.roll_to(period);
        BudgetSnapshot {
            today_usd: dollars(state.spent_day),
            month_usd: dollars(state.spent_month),
            reserved_usd: dollars(state.reserved),
        }
    }
}

impl State {
    /// Starts a new day or month when `period` is later than the one counted; never goes back
    /// (`YYYY-MM-DD` and `YYYY-MM` order as strings), so a call reserved before midnight and
    /// settled after it cannot wipe the new day's spend.
    fn roll_to(&mut self, period: &Period) {
        if period.month > self.month {
            self.month.clone_from(&period.month);
            self.spent_month = 0;
        }
        if period.day > self.day {
            self.day.clone_from(&period.day);
            self.spent_day = 0;
        }
    }
}

impl Reservation<'_> {
    /// The period the call is charged to (the one it was reserved in).
    pub fn period(&self) -> &Period {
        &self.period
    }

    /// Replaces the reservation with the call's real cost.
    pub fn settle(mut self, actual: Micros) {
        let mut state = self.budget.lock();
        state.reserved -= self.micros;
        state.roll_to(&self.period);
        // Charged to the period it was reserved in (as its ledger row is): after a rollover
        // that period is over and no longer counts against today's or this month's cap.
        if state.day == self.period.day {
            state.spent_day += actual;
        }
        if state.month == self.period.month {
            state.spent_month += actual;
        }
        self.micros = 0;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.micros != 0 {
            self.budget.lock().reserved -= self.micros;
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn caps(daily: f64, monthly: f64) -> BudgetConfig {
        BudgetConfig {
            daily_usd: daily,
            monthly_usd: monthly,
        }
    }

    const SONNET: ModelPrice = ModelPrice {
        input: 3.0,
        output: 15.0,
        cache_write: Some(3.75),
        cache_read: Some(0.3),
    };

    #[test]
    fn periods_roll_at_utc_midnight_and_month_end() {
        let period = Period::of(datetime!(2026-12-31 23:59:59 UTC));
        assert_eq!(period.day, "2026-12-31");
        assert_eq!(period.month, "2026-12");
        assert_eq!(period.day_ends, "2027-01-01T00:00:00Z");
        assert_eq!(period.month_ends, "2027-01-01T00:00:00Z");
        let period = Period::of(datetime!(2026-02-28 12:00 UTC));
        assert_eq!(period.day_ends, "2026-03-01T00:00:00Z");
        assert_eq!(period.month_ends, "2026-03-01T00:00:00Z");
    }

    #[test]
    fn costs_use_every_token_class() {
        let usage = Usage {
            input_tokens: 1_000,
            output_tokens: 500,
            cache_creation_input_tokens: 2_000,
            cache_read_input_tokens: 10_000,
        };
        // 1000*3 + 500*15 + 2000*3.75 + 10000*0.3 = 3000 + 7500 + 7500 + 3000 micro-dollars.
        assert_eq!(cost_of(&usage, &SONNET), 21_000);
        assert_eq!(worst_case(1_000, 4_096, &SONNET), 3_750 + 61_440);
    }

    #[test]
    fn small_amounts_keep_their_digits() {
        assert_eq!(usd(0.0025), "$0.0025");
        assert_eq!(usd(2.5), "$2.50");
        assert_eq!(usd(0.000001), "$0.000001");
        let error = Budget::new(&Period::of(datetime!(2026-11-28 10:00 UTC)), 0, 0)
            .reserve(5_000, &caps(0.0025, 0.0), &Period::of(datetime!(2026-11-28 10:00 UTC)))
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("the $0.0025 left of the daily budget of $0.0025"),
            "{error}"
        );
    }

    #[test]
    fn reservations_cannot_overshoot_a_cap() {
        let period = Period::of(datetime!(2026-11-28 10:00 UTC));
        let budget = Budget::new(&period, 0, 0);
        let caps = caps(0.10, 0.0);
        let first = budget.reserve(60_000, &caps, &period).unwrap();
        // 40_000 are left: the cap is not exhausted, this call is too costly for what is left.
        let Err(BudgetError::TooCostly { which, until, .. }) = budget.reserve(60_000, &caps, &period) else {
            panic!("the second reservation must not fit");
        };
        assert_eq!(which, "daily");
        assert_eq!(until, "2026-11-29T00:00:00Z");
        first.settle(20_000);
        // 20_000 spent, nothing reserved: 60_000 fits again, 90_000 does not.
        assert!(budget.reserve(90_000, &caps, &period).is_err());
        let second = budget.reserve(60_000, &caps, &period).unwrap();
        drop(second);
        assert_eq!(
            budget.snapshot(&period).reserved_usd,
            0.0,
            "an unsettled reservation is released"
        );
        assert!((budget.snapshot(&period).today_usd - 0.02).abs() < 1e-9);
    }

    #[test]
    fn the_monthly_cap_holds_across_days_and_resets_with_the_month() {
        let day_one = Period::of(datetime!(2026-11-29 10:00 UTC));
        let budget = Budget::new(&day_one, 0, 900_000);
        let caps = caps(0.0, 1.0);
        let error = budget.reserve(200_000, &caps, &day_one).unwrap_err();
        assert!(
            error.to_string().starts_with(
                "this call could cost up to $0.20 (its input and provider.max_tokens of output at the model's price), more than the $0.10 left of the monthly budget of $1.00 until 2026-12-01T00:00:00Z"
            ),
            "{error}"
        );
        budget.reserve(100_000, &caps, &day_one).unwrap().settle(100_000);
        let error = budget.reserve(1, &caps, &day_one).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("monthly budget exhausted until 2026-12-01T00:00:00Z: $1.00 spent"),
            "{error}"
        );
        let next_month = Period::of(datetime!(2026-12-01 00:00 UTC));
        budget.reserve(200_000, &caps, &next_month).unwrap().settle(200_000);
        assert!((budget.snapshot(&next_month).month_usd - 0.2).abs() < 1e-9);
    }

    #[test]
    fn a_call_settled_after_midnight_does_not_wipe_the_new_day() {
        let before = Period::of(datetime!(2026-11-30 23:59 UTC));
        let after = Period::of(datetime!(2026-12-01 00:04 UTC));
        let budget = Budget::new(&before, 0, 0);
        let caps = caps(1.0, 10.0);
        let late = budget.reserve(100, &caps, &before).unwrap();
        budget.reserve(500, &caps, &after).unwrap().settle(500);
        late.settle(100);
        let snapshot = budget.snapshot(&after);
        assert!((snapshot.today_usd - 0.0005).abs() < 1e-12, "{snapshot:?}");
        assert!((snapshot.month_usd - 0.0005).abs() < 1e-12, "{snapshot:?}");
        assert_eq!(snapshot.reserved_usd, 0.0);
    }

    #[test]
    fn a_zero_cap_means_no_cap_and_unpriced_models_are_refused() {
        let period = Period::now();
        let budget = Budget::new(&period, 0, 0);
        budget
            .reserve(Micros::MAX / 4, &caps(0.0, 0.0), &period)
            .unwrap()
            .settle(1);
        let pricing = BTreeMap::new();
        let error = price_of(&pricing, "mystery-7b").unwrap_err();
        assert!(error.to_string().contains("[pricing.\"mystery-7b\"]"), "{error}");
    }
}
