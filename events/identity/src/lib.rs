//! Who is calling: RS256 tokens verified against the issuer's keys ([`token`]), browser sessions kept
//! server-side ([`sessions`]), and a request's credentials turned into an actor with its System role
//! and memberships ([`auth`]). A new user's first request registers the user through the command
//! executor, the one way anything is appended.

pub mod auth;
pub mod sessions;
pub mod token;
