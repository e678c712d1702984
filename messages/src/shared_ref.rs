//! A shared, replaceable [`ActorRef`]: how a supervisor hands a restarted child's new ref to
//! everyone who talks to it, without a global registry.
//!
//! The supervisor that restarts a child calls [`SharedRef::set`]; dependents call
//! [`SharedRef::get`] for every message, so they reach the live actor.

use ractor::ActorRef;
use std::sync::{Arc, RwLock};

/// An [`ActorRef`] that a supervisor can swap after a restart. Cheap to clone.
#[derive(Debug)]
pub struct SharedRef<M> {
    inner: Arc<RwLock<ActorRef<M>>>,
}

impl<M> Clone for SharedRef<M> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<M> SharedRef<M> {
    /// Share `actor`.
    pub fn new(actor: ActorRef<M>) -> Self {
        Self {
            inner: Arc::new(RwLock::new(actor)),
        }
    }

    /// The current actor.
    pub fn get(&self) -> ActorRef<M> {
        crate::sync::read(&self.inner).clone()
    }

    /// Point everyone at a new actor.
    pub fn set(&self, actor: ActorRef<M>) {
        *crate::sync::write(&self.inner) = actor;
    }
}
