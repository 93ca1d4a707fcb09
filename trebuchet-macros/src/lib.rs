//! The `#[distributed_actor]` attribute of the `trebuchet` crate. Use it through
//! `trebuchet::distributed_actor`; the generated code is documented there.
//!
//! Like `serde_derive`, the macro works in three steps: [`ast`] reads the trait into a small model
//! and checks it (collecting every error with its span), then [`expand`] writes the code.

use proc_macro::TokenStream;

mod ast;
mod expand;

/// Turns an actor trait into a distributed actor: a client stub (`{Trait}Client`), a dispatch
/// table (`{Trait}Protocol`) and the request/response enums (`{Trait}Request`,
/// `{Trait}Response`).
///
/// Every method must be an `async fn` taking `&self` and owned, serializable arguments, and
/// return `Result<T, E>` where `E` implements `trebuchet::ActorError`. The trait gains the
/// supertraits `Send + Sync + 'static`, its methods return `Send` futures, and it gets one
/// provided method, `into_actor(self)`, for `ActorSystem::expose`.
///
/// A method marked `#[stream]` returns `Result<trebuchet::ActorStream<T>, E>` instead: the caller
/// gets the stream of items.
///
/// `#[distributed_actor(state = CounterState)]` declares a stateful actor: the protocol and the
/// stub gain the stream method `observe_state()`, which yields each state the actor commits
/// from then on, and the implementation must implement `trebuchet::state::StatefulActor` (give
/// access to its `State<CounterState>`).
///
/// `#[distributed_actor(crate = "path::to::trebuchet")]` changes the path generated code uses
/// for the core crate (for crates that rename or re-export it).
#[proc_macro_attribute]
pub fn distributed_actor(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = ast::Errors::default();
    let options = ast::Options::parse(args.into(), &mut errors);
    let mut actor = ast::ActorTrait::parse(item.into(), &mut errors);
    if let Some(actor) = &mut actor {
        actor.add_observe_state(&options, &mut errors);
    }
    if let Some(errors) = errors.into_compile_errors() {
        return errors.into();
    }
    match actor {
        Some(actor) => expand::expand(&actor, &options).into(),
        None => TokenStream::new(),
    }
}
