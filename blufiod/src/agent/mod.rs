//! The agent: sessions, the turn loop, LLM providers, tools, and the cost ledger with hard
//! budget caps.

pub mod provider;
pub mod tools;
