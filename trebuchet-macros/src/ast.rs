//! The model of an actor trait, and the checks that build it.
//!
//! [`ActorTrait::parse`] reads the attribute's arguments and the trait into a few plain structs.
//! Every problem found is recorded with its span in [`Errors`], and parsing goes on, so a user sees
//! all the mistakes of a trait at once.

use proc_macro2::{Span, TokenStream};
use syn::ext::IdentExt;
use syn::punctuated::Punctuated;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, Item, ItemTrait, Pat, PathArguments, ReturnType,
    Signature, Token, TraitItem, TraitItemFn, Type, TypeParamBound, Visibility,
};

/// The name of the method `#[distributed_actor]` adds to every actor trait.
pub const INTO_ACTOR: &str = "into_actor";

/// Errors collected while reading the trait.
#[derive(Default)]
pub struct Errors {
    errors: Vec<syn::Error>,
}

impl Errors {
    pub fn push(&mut self, spanned: impl quote::ToTokens, message: impl std::fmt::Display) {
        self.errors.push(syn::Error::new_spanned(spanned, message));
    }

    pub fn push_at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.errors.push(syn::Error::new(span, message));
    }

    /// All errors as one `compile_error!` token stream, or `None` if there were none.
    pub fn into_compile_errors(self) -> Option<TokenStream> {
        let mut errors = self.errors.into_iter();
        let mut first = errors.next()?;
        for error in errors {
            first.combine(error);
        }
        Some(first.to_compile_error())
    }
}

/// The arguments of the attribute: `#[distributed_actor(crate = "path")]`.
pub struct Options {
    /// The path generated code uses for the core crate (default `::trebuchet`).
    pub krate: syn::Path,
}

impl Options {
    pub fn parse(args: TokenStream, errors: &mut Errors) -> Options {
        let mut krate: syn::Path = syn::parse_quote!(::trebuchet);
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("crate") {
                let value: syn::LitStr = meta.value()?.parse()?;
                krate = value.parse()?;
                Ok(())
            } else {
                Err(meta.error("unknown argument; the only argument is `crate = \"path\"`"))
            }
        });
        if let Err(error) = syn::parse::Parser::parse2(parser, args) {
            errors.errors.push(error);
        }
        Options { krate }
    }
}

/// An actor trait.
pub struct ActorTrait {
    pub attrs: Vec<Attribute>,
    pub vis: Visibility,
    pub ident: Ident,
    pub supertraits: Punctuated<TypeParamBound, Token![+]>,
    pub methods: Vec<Method>,
}

/// One method of an actor trait.
pub struct Method {
    pub attrs: Vec<Attribute>,
    /// The method's name, as written.
    pub ident: Ident,
    /// The method's name on the wire (the identifier without `r#`).
    pub wire_name: String,
    /// The name of its variant in the request and response enums (UpperCamelCase).
    pub variant: Ident,
    pub args: Vec<Arg>,
    /// The whole return type, `Result<T, E>`.
    pub output: Type,
    /// `T` of `Result<T, E>`.
    pub ok: Type,
    /// `E` of `Result<T, E>`.
    pub err: Type,
    /// A default body, if the trait gives one.
    pub default: Option<syn::Block>,
    /// For a `#[stream]` method, the item type `T` of `Result<ActorStream<T>, E>`.
    pub stream_item: Option<Type>,
}

/// One argument of a method.
pub struct Arg {
    pub ident: Ident,
    pub ty: Type,
}

impl ActorTrait {
    /// Reads `item`, which must be a trait. Returns `None` if it is not a trait at all.
    pub fn parse(item: TokenStream, errors: &mut Errors) -> Option<ActorTrait> {
        let item: Item = match syn::parse2(item) {
            Ok(item) => item,
            Err(error) => {
                errors.errors.push(error);
                return None;
            }
        };
        let Item::Trait(item) = item else {
            errors.push(
                &item,
                "#[distributed_actor] can only be used on a trait (the actor's interface); \
                 implement that trait on your type",
            );
            return None;
        };
        Some(Self::from_trait(item, errors))
    }

    fn from_trait(item: ItemTrait, errors: &mut Errors) -> ActorTrait {
        if let Some(unsafety) = &item.unsafety {
            errors.push(unsafety, "a distributed actor trait cannot be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            errors.push(auto, "a distributed actor trait cannot be an auto trait");
        }
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(
                &item.generics,
                "a distributed actor trait cannot be generic: every call must have one concrete \
                 type on the wire",
            );
        }
        let mut methods: Vec<Method> = Vec::new();
        for trait_item in item.items {
            match trait_item {
                TraitItem::Fn(function) => {
                    if let Some(method) = Method::parse(function, errors) {
                        if let Some(earlier) = methods.iter().find(|m| m.variant == method.variant)
                        {
                            errors.push(
                                &method.ident,
                                format!(
                                    "`{}` and `{}` would both become the variant `{}` of the \
                                     generated request enum; rename one of them",
                                    earlier.ident, method.ident, method.variant
                                ),
                            );
                        }
                        methods.push(method);
                    }
                }
                other => errors.push(
                    &other,
                    "a distributed actor trait can only contain methods (`async fn`)",
                ),
            }
        }
        ActorTrait {
            attrs: item.attrs,
            vis: item.vis,
            ident: item.ident,
            supertraits: item.supertraits,
            methods,
        }
    }
}

impl Method {
    fn parse(function: TraitItemFn, errors: &mut Errors) -> Option<Method> {
        let TraitItemFn {
            mut attrs,
            sig,
            default,
            ..
        } = function;
        let before = errors.errors.len();
        let stream_attr = take_stream_attribute(&mut attrs, errors);
        check_signature(&sig, errors);
        let args = parse_args(&sig, errors);
        let output = parse_output(&sig, errors);
        let wire_name = sig.ident.unraw().to_string();
        if wire_name == INTO_ACTOR {
            errors.push(
                &sig.ident,
                format!(
                    "`{INTO_ACTOR}` is generated by #[distributed_actor] (it turns an \
                     implementation into an exposable actor); rename this method"
                ),
            );
        }
        let (output, ok, err) = output?;
        let stream_item = actor_stream_item(&ok);
        match (&stream_attr, &stream_item) {
            (Some(attr), None) => errors.push(
                attr,
                "#[stream] methods must return `Result<ActorStream<T>, E>` (trebuchet::ActorStream)",
            ),
            (None, Some(_)) => errors.push(
                &ok,
                "a method returning an ActorStream must be marked #[stream]",
            ),
            _ => {}
        }
        if errors.errors.len() > before {
            return None;
        }
        Some(Method {
            attrs,
            variant: Ident::new(&upper_camel_case(&wire_name), sig.ident.span()),
            ident: sig.ident,
            wire_name,
            args,
            output,
            ok,
            err,
            default,
            stream_item,
        })
    }
}

/// Removes `#[stream]` from `attrs`, returning it if it was there.
fn take_stream_attribute(attrs: &mut Vec<Attribute>, errors: &mut Errors) -> Option<Attribute> {
    let position = attrs
        .iter()
        .position(|attr| attr.path().is_ident("stream"))?;
    let attr = attrs.remove(position);
    if !matches!(attr.meta, syn::Meta::Path(_)) {
        errors.push(&attr, "#[stream] takes no arguments");
    }
    Some(attr)
}

/// `T` if `ty` is `ActorStream<T>` (by any path ending in `ActorStream`).
fn actor_stream_item(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let segment = path.path.segments.last()?;
    if segment.ident != "ActorStream" {
        return None;
    }
    let PathArguments::AngleBracketed(arguments) = &segment.arguments else {
        return None;
    };
    match arguments.args.first()? {
        GenericArgument::Type(item) if arguments.args.len() == 1 => Some(item.clone()),
        _ => None,
    }
}

fn check_signature(sig: &Signature, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors.push_at(
            sig.fn_token.span,
            format!(
                "distributed actor methods must be `async fn`: write `async fn {}`",
                sig.ident
            ),
        );
    }
    if let Some(constness) = &sig.constness {
        errors.push(constness, "distributed actor methods cannot be `const`");
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(unsafety, "distributed actor methods cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.push(abi, "distributed actor methods cannot have an `extern` ABI");
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(variadic, "distributed actor methods cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            "distributed actor methods cannot be generic: their arguments and result must have \
             one concrete type to go over the wire",
        );
    }
    match sig.inputs.first() {
        Some(FnArg::Receiver(receiver)) => {
            if receiver.reference.is_none() {
                errors.push(
                    receiver,
                    "distributed actor methods take `&self`: `self` by value would consume the \
                     actor, which all its callers share",
                );
            } else if receiver.mutability.is_some() {
                errors.push(
                    receiver,
                    "distributed actor methods take `&self`, not `&mut self`: an actor runs one \
                     call at a time, so keep its state behind interior mutability (a Mutex, \
                     atomics) and take `&self`",
                );
            } else if receiver.colon_token.is_some() {
                errors.push(receiver, "write the receiver as plain `&self`");
            }
        }
        _ => errors.push_at(
            sig.ident.span(),
            format!(
                "`{}` needs a `&self` receiver: a distributed actor method is called on an actor",
                sig.ident
            ),
        ),
    }
}

fn parse_args(sig: &Signature, errors: &mut Errors) -> Vec<Arg> {
    let mut args = Vec::new();
    for input in sig.inputs.iter().skip(1) {
        let FnArg::Typed(typed) = input else { continue };
        let ident = match &*typed.pat {
            Pat::Ident(pat)
                if pat.by_ref.is_none() && pat.mutability.is_none() && pat.subpat.is_none() =>
            {
                pat.ident.clone()
            }
            other => {
                errors.push(
                    other,
                    "arguments of distributed actor methods must be plain names (`by: u64`), not \
                     patterns: the name is the argument's key on the wire",
                );
                continue;
            }
        };
        match &*typed.ty {
            Type::Reference(_) => errors.push(
                &typed.ty,
                "arguments of distributed actor methods must be owned values (`String`, not \
                 `&str`): they are deserialized on the actor's side",
            ),
            Type::ImplTrait(_) => errors.push(
                &typed.ty,
                "arguments of distributed actor methods cannot be `impl Trait`: they need one \
                 concrete type to go over the wire",
            ),
            _ => {}
        }
        args.push(Arg {
            ident,
            ty: (*typed.ty).clone(),
        });
    }
    args
}

fn parse_output(sig: &Signature, errors: &mut Errors) -> Option<(Type, Type, Type)> {
    let message = "distributed actor methods must return `Result<T, E>`, where E converts from \
                   `trebuchet::RemoteError` (so a failed call can be reported to the caller)";
    let ReturnType::Type(_, ty) = &sig.output else {
        errors.push_at(sig.paren_token.span.close(), message);
        return None;
    };
    let result = match &**ty {
        Type::Path(path) if path.qself.is_none() => path.path.segments.last(),
        _ => None,
    };
    let arguments = match result {
        Some(segment) if segment.ident == "Result" => match &segment.arguments {
            PathArguments::AngleBracketed(arguments) => Some(&arguments.args),
            _ => None,
        },
        _ => None,
    };
    let types: Vec<&Type> = arguments
        .into_iter()
        .flatten()
        .filter_map(|argument| match argument {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .collect();
    match types.as_slice() {
        [ok, err] => Some(((**ty).clone(), (*ok).clone(), (*err).clone())),
        _ => {
            errors.push(ty, message);
            None
        }
    }
}

/// `increment_by` → `IncrementBy`.
fn upper_camel_case(name: &str) -> String {
    name.split('_')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            match chars.next() {
                Some(first) => first.to_uppercase().chain(chars).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camel_cases_method_names() {
        assert_eq!(upper_camel_case("get"), "Get");
        assert_eq!(upper_camel_case("increment_by"), "IncrementBy");
        assert_eq!(upper_camel_case("_private__name"), "PrivateName");
        assert_eq!(upper_camel_case("type"), "Type");
    }

    #[test]
    fn collects_every_error() {
        let mut errors = Errors::default();
        let item = quote::quote! {
            trait Bad {
                fn not_async(&self) -> Result<(), E>;
                async fn by_value(self) -> Result<(), E>;
                async fn no_result(&self) -> u64;
            }
        };
        let parsed = ActorTrait::parse(item, &mut errors).unwrap();
        assert!(parsed.methods.is_empty());
        assert_eq!(errors.errors.len(), 3);
    }
}
