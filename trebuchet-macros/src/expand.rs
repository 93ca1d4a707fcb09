//! Code generation from the model in [`crate::ast`].
//!
//! For `trait Counter` this writes, next to the (rewritten) trait:
//! * `CounterProtocol`: the marker type implementing `ActorProtocol` (the dispatch table: method
//!   name → decode arguments → request) and `Dispatch<A>` for every `A: Counter`
//!   (request → call → response);
//! * `CounterRequest` / `CounterResponse`: one variant per method;
//! * `CounterClient`: the client stub, which implements `Counter` itself;
//! * with `state = T`, the stream method `observe_state` in the protocol (dispatched to
//!   `StatefulActor::state(actor).changes()`) and as an inherent method of the stub.
//!
//! Generated code reaches the core crate only through `Options::krate` (`::trebuchet`).

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ast::{ActorTrait, INTO_ACTOR, Method, Options};

pub fn expand(actor: &ActorTrait, options: &Options) -> TokenStream {
    let krate = &options.krate;
    let serde_path = format!("{}::__private::serde", quote!(#krate)).replace(' ', "");
    let names = Names::of(actor);

    let tokens = [
        expand_trait(actor, &names, options),
        expand_messages(actor, &names),
        expand_protocol(actor, &names, options, &serde_path),
        expand_dispatch(actor, &names, options),
        expand_client(actor, &names, options),
        expand_bound_checks(actor, options),
    ];
    quote!(#(#tokens)*)
}

struct Names {
    protocol: syn::Ident,
    request: syn::Ident,
    response: syn::Ident,
    client: syn::Ident,
}

impl Names {
    fn of(actor: &ActorTrait) -> Names {
        let name = &actor.ident;
        Names {
            protocol: format_ident!("{name}Protocol"),
            request: format_ident!("{name}Request"),
            response: format_ident!("{name}Response"),
            client: format_ident!("{name}Client"),
        }
    }
}

/// `fn name(&self, a: A, …) -> impl Future<Output = Result<T, E>> + Send`
fn signature(method: &Method) -> TokenStream {
    let Method {
        ident,
        args,
        output,
        ..
    } = method;
    let args = args.iter().map(|arg| {
        let (ident, ty) = (&arg.ident, &arg.ty);
        quote!(#ident: #ty)
    });
    quote! {
        fn #ident(&self, #(#args),*)
            -> impl ::core::future::Future<Output = #output> + ::core::marker::Send
    }
}

fn expand_trait(actor: &ActorTrait, names: &Names, options: &Options) -> TokenStream {
    let ActorTrait {
        attrs,
        vis,
        ident,
        supertraits,
        methods,
    } = actor;
    let krate = &options.krate;
    let protocol = &names.protocol;
    let plus = (!supertraits.is_empty()).then(|| quote!(+));
    let into_actor = format_ident!("{INTO_ACTOR}");
    let methods = methods
        .iter()
        .filter(|method| !method.generated)
        .map(|method| {
            let attrs = &method.attrs;
            let signature = signature(method);
            match &method.default {
                Some(body) => quote! {
                    #(#attrs)*
                    #signature { async move #body }
                },
                None => quote! {
                    #(#attrs)*
                    #signature;
                },
            }
        });
    quote! {
        #(#attrs)*
        #vis trait #ident: #supertraits #plus ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#methods)*

            /// Pairs this implementation with its protocol, ready for `ActorSystem::expose`.
            fn #into_actor(self) -> #krate::Actor<#protocol, Self>
            where
                Self: ::core::marker::Sized,
            {
                #krate::Actor::new(self)
            }
        }
    }
}

fn expand_messages(actor: &ActorTrait, names: &Names) -> TokenStream {
    let vis = &actor.vis;
    let trait_name = &actor.ident;
    let (request, response) = (&names.request, &names.response);
    let request_doc = format!("A call of a [`{trait_name}`] method, with its arguments.");
    let response_doc = format!("The outcome of a [`{trait_name}`] method.");
    let requests = actor.methods.iter().map(|method| {
        let variant = &method.variant;
        let fields = method.args.iter().map(|arg| {
            let (ident, ty) = (&arg.ident, &arg.ty);
            quote!(#ident: #ty)
        });
        let doc = format!("Arguments of `{}`.", method.wire_name);
        quote!(#[doc = #doc] #variant { #(#fields),* })
    });
    let responses = actor.methods.iter().map(|method| {
        let (variant, output) = (&method.variant, &method.output);
        let doc = format!("Outcome of `{}`.", method.wire_name);
        quote!(#[doc = #doc] #variant(#output))
    });
    quote! {
        #[doc = #request_doc]
        #[allow(clippy::large_enum_variant)]
        #vis enum #request { #(#requests),* }

        #[doc = #response_doc]
        #[allow(clippy::large_enum_variant)]
        #vis enum #response { #(#responses),* }
    }
}

fn expand_protocol(
    actor: &ActorTrait,
    names: &Names,
    options: &Options,
    serde_path: &str,
) -> TokenStream {
    let krate = &options.krate;
    let vis = &actor.vis;
    let trait_name = actor.ident.to_string();
    let Names {
        protocol,
        request,
        response,
        ..
    } = names;
    let doc = format!(
        "The wire protocol of [`{trait_name}`]: its dispatch table, generated by \
         `#[distributed_actor]`."
    );
    let wire_names: Vec<&str> = actor.methods.iter().map(|m| m.wire_name.as_str()).collect();
    let stream_names = actor
        .methods
        .iter()
        .filter(|m| m.stream_item.is_some())
        .map(|m| m.wire_name.as_str());

    let decoders = actor.methods.iter().map(|method| {
        let (wire_name, variant) = (&method.wire_name, &method.variant);
        let fields: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        let types = method.args.iter().map(|arg| &arg.ty);
        quote! {
            #wire_name => {
                #[derive(#krate::__private::serde::Deserialize)]
                #[serde(crate = #serde_path, deny_unknown_fields)]
                struct __Args { #(#fields: #types),* }
                let __Args { #(#fields),* } = __args
                    .decode::<__Args>()
                    .map_err(#krate::DecodeRequestError::InvalidArguments)?;
                ::core::result::Result::Ok(#request::#variant { #(#fields),* })
            }
        }
    });

    let encoders = actor.methods.iter().map(|method| {
        let (wire_name, variant) = (&method.wire_name, &method.variant);
        let fields: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        let types = method.args.iter().map(|arg| &arg.ty);
        let (lifetime, refs) = if fields.is_empty() {
            (None, quote!())
        } else {
            (Some(quote!(<'__a>)), quote!(#(#fields: &'__a #types),*))
        };
        quote! {
            #request::#variant { #(#fields),* } => {
                #[derive(#krate::__private::serde::Serialize)]
                #[serde(crate = #serde_path)]
                struct __Args #lifetime { #refs }
                let __payload = #krate::Payload::encode(&__Args { #(#fields),* }, __encoding)?;
                ::core::result::Result::Ok((#wire_name, __payload))
            }
        }
    });

    let response_encoders = actor.methods.iter().map(|method| {
        let variant = &method.variant;
        let encode = match method.stream_item {
            Some(_) => quote!(encode_stream),
            None => quote!(encode_outcome),
        };
        quote! {
            #response::#variant(__outcome) => #krate::__private::#encode(__outcome, __encoding),
        }
    });

    quote! {
        #[doc = #doc]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #protocol;

        impl #krate::ActorProtocol for #protocol {
            const TRAIT_NAME: &'static str = #trait_name;
            const METHODS: &'static [&'static str] = &[#(#wire_names),*];
            const STREAM_METHODS: &'static [&'static str] = &[#(#stream_names),*];
            type Request = #request;
            type Response = #response;

            fn decode_request(
                __method: &str,
                __args: &#krate::Payload,
            ) -> ::core::result::Result<#request, #krate::DecodeRequestError> {
                match __method {
                    #(#decoders)*
                    _ => ::core::result::Result::Err(#krate::DecodeRequestError::UnknownMethod),
                }
            }

            fn encode_request(
                __request: &#request,
                __encoding: #krate::Encoding,
            ) -> ::core::result::Result<(&'static str, #krate::Payload), #krate::protocol::PayloadError> {
                match __request {
                    #(#encoders)*
                }
            }

            fn encode_response(
                __response: #response,
                __encoding: #krate::Encoding,
            ) -> ::core::result::Result<#krate::Reply, #krate::RemoteError> {
                match __response {
                    #(#response_encoders)*
                }
            }
        }
    }
}

fn expand_dispatch(actor: &ActorTrait, names: &Names, options: &Options) -> TokenStream {
    let krate = &options.krate;
    let trait_name = &actor.ident;
    let Names {
        protocol,
        request,
        response,
        ..
    } = names;
    let arms = actor.methods.iter().map(|method| {
        let (ident, variant) = (&method.ident, &method.variant);
        let fields: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        if method.generated {
            // `observe_state`: the commits of the actor's state handle.
            return quote! {
                #request::#variant {} => #response::#variant(::core::result::Result::Ok(
                    #krate::ActorStream::from_results(#krate::state::StatefulActor::state(__actor).changes()),
                ))
            };
        }
        quote! {
            #request::#variant { #(#fields),* } => {
                #response::#variant(<__A as #trait_name>::#ident(__actor, #(#fields),*).await)
            }
        }
    });
    let stateful = options
        .state
        .as_ref()
        .map(|state| quote!(+ #krate::state::StatefulActor<State = #state>));
    quote! {
        impl<__A: #trait_name #stateful> #krate::Dispatch<__A> for #protocol {
            fn handle(
                __actor: &__A,
                __request: #request,
            ) -> impl ::core::future::Future<Output = #response> + ::core::marker::Send {
                async move {
                    match __request {
                        #(#arms)*
                    }
                }
            }
        }
    }
}

fn expand_client(actor: &ActorTrait, names: &Names, options: &Options) -> TokenStream {
    let krate = &options.krate;
    let vis = &actor.vis;
    let trait_name = &actor.ident;
    let Names {
        protocol,
        request,
        response,
        client,
    } = names;
    let doc = format!(
        "A client stub for [`{trait_name}`]: calls an actor through any transport and implements \
         `{trait_name}` itself. Get one with `client.actor::<{client}>(\"id\")`."
    );
    let stub_method = |method: &Method| {
        let variant = &method.variant;
        let signature = signature(method);
        let fields: Vec<_> = method.args.iter().map(|arg| &arg.ident).collect();
        let call = match method.stream_item {
            Some(_) => quote!(open_stream),
            None => quote!(call),
        };
        let vis = method.generated.then(|| quote!(pub));
        let doc = method.generated.then(|| {
            quote!(#[doc = "Each state the actor commits from now on, in order (a reader that falls too far behind gets a `StreamGap` error and the stream ends); generated by `state = ...`."])
        });
        quote! {
            #doc
            #vis #signature {
                self.actor.#call(#request::#variant { #(#fields),* }, |__response| match __response {
                    #response::#variant(__outcome) => ::core::option::Option::Some(__outcome),
                    #[allow(unreachable_patterns)]
                    _ => ::core::option::Option::None,
                })
            }
        }
    };
    let methods = actor
        .methods
        .iter()
        .filter(|method| !method.generated)
        .map(stub_method);
    let generated = actor
        .methods
        .iter()
        .filter(|method| method.generated)
        .map(stub_method);
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #client {
            actor: #krate::ActorRef<#protocol>,
        }

        impl #krate::RemoteActor for #client {
            type Protocol = #protocol;

            fn from_ref(actor: #krate::ActorRef<#protocol>) -> Self {
                #client { actor }
            }

            fn actor_ref(&self) -> &#krate::ActorRef<#protocol> {
                &self.actor
            }
        }

        impl #trait_name for #client {
            #(#methods)*
        }

        impl #client {
            #(#generated)*
        }
    }
}

/// Checks the bounds on argument, result and error types where the user wrote them, so a type
/// that cannot go over the wire is reported at its own span.
fn expand_bound_checks(actor: &ActorTrait, options: &Options) -> TokenStream {
    let krate = &options.krate;
    let serde = quote!(#krate::__private::serde);
    let checks = actor.methods.iter().flat_map(|method| {
        let values = method
            .args
            .iter()
            .map(|arg| &arg.ty)
            .chain(std::iter::once(
                method.stream_item.as_ref().unwrap_or(&method.ok),
            ))
            .map(|ty| quote_spanned!(ty.span()=> __wire_value::<#ty>();));
        let err = &method.err;
        let error = quote_spanned!(err.span()=> __actor_error::<#err>(););
        values.chain(std::iter::once(error)).collect::<Vec<_>>()
    });
    quote! {
        const _: () = {
            fn __wire_value<T>()
            where
                T: #serde::Serialize + #serde::de::DeserializeOwned + ::core::marker::Send + 'static,
            {
            }
            fn __actor_error<E: #krate::ActorError>() {}
            #[allow(dead_code)]
            fn __check_wire_types() {
                #(#checks)*
            }
        };
    }
}
