//! The `#[remote]` and `#[actor]` attribute macros of Manta.
//!
//! Generated code names the runtime through `::manta` (the facade crate), so these macros are
//! for crates that depend on `manta`. Remote functions and actor classes must be module-level
//! items: the generated module for a function `f` sits beside it and reaches it as `super::f`.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ImplItem, ItemFn, ItemImpl, ItemStruct, ReturnType, Type, parse_macro_input};

/// Makes a function remote: `f::remote(args)` submits it as a task and returns an
/// `ObjectRef` of its result; `f::options().num_cpus(2.0).remote(args)` sets per-call options.
///
/// Each argument may be given as a value or as an `ObjectRef` of that type.
///
/// A function declared to return `Result<T, E>` (written so: a path ending in `Result` with two
/// type arguments) is *fallible*, as a Python function that raises is in Ray: `f::remote`
/// returns an `ObjectRef<T>`, `Ok(v)` is its value, and `Err(e)` fails the task — `get` gives
/// `Error::Task` whose `downcast_ref::<E>()` is `e`, in every mode (it travels serialised). `E`
/// must be `Serialize + DeserializeOwned + Display + Send + Sync + 'static`; an `Err` runs the
/// task again only with `retry_exceptions` (as in Ray). A one-argument alias such as `io::Result<T>` is not
/// recognised and stays the task's value.
///
/// `#[remote(num_returns = N)]` on a function returning an `N`-tuple makes each element its
/// own object (Ray's `num_returns`): `f::remote(..)` returns a tuple of `N` `ObjectRef`s, each
/// with its own id, usable and freed on its own (a fallible one returns `Result<(..), E>`;
/// its `Err` fails every return).
#[proc_macro_attribute]
pub fn remote(attr: TokenStream, item: TokenStream) -> TokenStream {
    let num_returns = match parse_num_returns(attr.into()) {
        Ok(n) => n,
        Err(e) => return e.into_compile_error().into(),
    };
    let func = parse_macro_input!(item as ItemFn);
    expand_remote(func, num_returns)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// `num_returns = N` (N ≥ 1), or nothing (1).
fn parse_num_returns(attr: TokenStream2) -> syn::Result<usize> {
    if attr.is_empty() {
        return Ok(1);
    }
    let span = attr.span();
    let nv: syn::MetaNameValue = syn::parse2(attr).map_err(|_| {
        syn::Error::new(
            span,
            "#[remote] takes only `num_returns = N`; set other options per call with f::options()",
        )
    })?;
    if !nv.path.is_ident("num_returns") {
        return Err(syn::Error::new(
            nv.path.span(),
            "#[remote] takes only `num_returns = N`; set other options per call with f::options()",
        ));
    }
    let n = match &nv.value {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Int(i),
            ..
        }) => i.base10_parse::<usize>()?,
        other => {
            return Err(syn::Error::new(
                other.span(),
                "num_returns must be an integer literal",
            ));
        }
    };
    if n == 0 {
        return Err(syn::Error::new(
            nv.value.span(),
            "num_returns must be at least 1",
        ));
    }
    Ok(n)
}

/// Makes a struct an actor class. Put it on the struct *and* on its `impl` block (in the same
/// module): the impl must have a constructor `fn new(..) -> Self`; its `&self`/`&mut self`
/// methods become remote methods, callable through `ActorHandle<Self>`. A method may carry
/// `#[method(retry_exceptions = true|false, max_task_retries = N)]` (Ray's `@ray.method`):
/// its own retries after a panic (and, for `max_task_retries`, after its actor's worker
/// died), over the actor's options; the attribute is read and removed here.
#[proc_macro_attribute]
pub fn actor(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            Span::call_site(),
            "#[actor] takes no arguments; set options with Actor::options()",
        )
        .to_compile_error()
        .into();
    }
    let parsed: syn::Item = parse_macro_input!(item as syn::Item);
    let out = match parsed {
        syn::Item::Struct(s) => expand_actor_struct(s),
        syn::Item::Impl(i) => expand_actor_impl(i),
        other => Err(syn::Error::new(
            other.span(),
            "#[actor] goes on a struct and on its impl block",
        )),
    };
    out.unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The typed arguments of a function signature, renamed `__arg0..`.
struct Args {
    names: Vec<syn::Ident>,
    types: Vec<Type>,
}

fn typed_args<'a>(inputs: impl Iterator<Item = &'a FnArg>) -> syn::Result<Args> {
    let mut names = Vec::new();
    let mut types = Vec::new();
    for (i, arg) in inputs.enumerate() {
        match arg {
            FnArg::Typed(pt) => {
                if let Type::ImplTrait(_) = &*pt.ty {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "remote arguments need concrete types, not `impl Trait`",
                    ));
                }
                if let Type::Reference(_) = &*pt.ty {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "remote arguments are owned values (they may travel to another process); take `T`, not `&T`",
                    ));
                }
                names.push(format_ident!("__arg{}", i));
                types.push((*pt.ty).clone());
            }
            FnArg::Receiver(r) => return Err(syn::Error::new(r.span(), "unexpected receiver")),
        }
    }
    Ok(Args { names, types })
}

/// `T` and `E` of a return type written `Result<T, E>` (any path ending in `Result` with two
/// type arguments). Such a remote function is *fallible*: `Ok(v)` is its value, `Err(e)` fails
/// the task with `e` as the typed cause. A one-argument alias (`io::Result<T>`) is not
/// recognised: its `Result` is then the task's value, as any other type.
fn fallible(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    if p.qself.is_some() {
        return None;
    }
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let (ok, err) = (types.next()?, types.next()?);
    if types.next().is_some() || args.args.len() != 2 {
        return None;
    }
    Some((ok, err))
}

fn return_type(output: &ReturnType) -> Type {
    match output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    }
}

fn expand_remote(func: ItemFn, num_returns: usize) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "remote functions cannot be generic: each is registered under one stable name",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(
            r.span(),
            "#[remote] is for free functions; use #[actor] for methods",
        ));
    }
    let name = &sig.ident;
    let vis = &func.vis;
    let Args { names, types } = typed_args(sig.inputs.iter())?;
    let declared = return_type(&sig.output);
    let call = if sig.asyncness.is_some() {
        quote!(::manta::block_on(super::#name(#(#names),*)))
    } else {
        quote!(super::#name(#(#names),*))
    };
    // A fallible function's object holds its `Ok` value; its `Err` fails the task.
    let err_ty = fallible(&declared).map(|(_, err)| err);
    let (ret, finish, register_error) = match fallible(&declared) {
        Some((ok, err)) => (
            ok,
            quote! {
                match __out {
                    ::core::result::Result::Ok(__v) => ::manta::__private::encode(&__v),
                    ::core::result::Result::Err(__e) => ::core::result::Result::Err(
                        ::manta::__private::returned_error::<#err>(FUNCTION.name(), &__e),
                    ),
                }
            },
            quote! {
                ::manta::__private::inventory::submit! {
                    ::manta::__private::ErrorTypeRegistration(
                        &::manta::__private::ErrorType::of::<#err>()
                    )
                }
            },
        ),
        None => (
            declared.clone(),
            quote!(::manta::__private::encode(&__out)),
            quote!(),
        ),
    };
    let doc = format!(
        "Remote handle of [`{name}`](fn@{name}): `{name}::remote(..)` submits it as a task."
    );
    // What differs with several returns: the registration, the body's encoding, what
    // `remote` returns and how it submits.
    let (function, invoke_ret, encode_out, remote_ret, submit) = if num_returns == 1 {
        (
            quote!(::manta::__private::RemoteFunction::new(
                ::core::module_path!(),
                __invoke
            )),
            quote!(::manta::__private::ObjectValue),
            finish,
            quote!(::manta::ObjectRef<#ret>),
            quote! {
                ::manta::__private::submit(
                    &FUNCTION,
                    ::std::vec![#( ::manta::IntoArg::into_slot(#names) ),*],
                    &self.0,
                )
            },
        )
    } else {
        let elems = match &ret {
            Type::Tuple(t) if t.elems.len() == num_returns => {
                t.elems.iter().cloned().collect::<Vec<_>>()
            }
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    format!(
                        "a function with num_returns = {num_returns} returns a tuple of {num_returns} elements"
                    ),
                ));
            }
        };
        let index = (0..num_returns).map(syn::Index::from);
        let nexts = (0..num_returns).map(|_| quote!(__returns.next()));
        (
            quote!(::manta::__private::RemoteFunction::with_returns(::core::module_path!(), #num_returns, __invoke)),
            quote!(::std::vec::Vec<::manta::__private::ObjectValue>),
            match &err_ty {
                // A fallible function's `Ok` tuple is the returns; its `Err` fails them all.
                Some(err) => quote! {
                    match __out {
                        ::core::result::Result::Ok(__v) => ::core::result::Result::Ok(
                            ::std::vec![#( ::manta::__private::encode(&__v.#index)? ),*]
                        ),
                        ::core::result::Result::Err(__e) => ::core::result::Result::Err(
                            ::manta::__private::returned_error::<#err>(FUNCTION.name(), &__e),
                        ),
                    }
                },
                None => quote!(::core::result::Result::Ok(
                    ::std::vec![#( ::manta::__private::encode(&__out.#index)? ),*]
                )),
            },
            quote!((#( ::manta::ObjectRef<#elems> ),*)),
            quote! {
                let mut __returns = ::manta::__private::submit_returns(
                    &FUNCTION,
                    ::std::vec![#( ::manta::IntoArg::into_slot(#names) ),*],
                    &self.0,
                );
                (#( #nexts ),*)
            },
        )
    };
    Ok(quote! {
        #func

        #[doc = #doc]
        #[allow(non_snake_case, non_camel_case_types, unreachable_pub, clippy::too_many_arguments)]
        #vis mod #name {
            #[allow(unused_imports)]
            use super::*;

            /// The registered function.
            pub static FUNCTION: ::manta::__private::RemoteFunction = #function;

            ::manta::__private::inventory::submit! { ::manta::__private::Registration(&FUNCTION) }
            #register_error

            fn __invoke(
                __args: &mut ::manta::__private::ArgReader<'_>,
            ) -> ::core::result::Result<#invoke_ret, ::manta::Error> {
                #( let #names: #types = __args.next()?; )*
                let __out: #declared = #call;
                #encode_out
            }

            /// Submits the function as a task with default options.
            pub fn remote(#( #names: impl ::manta::IntoArg<#types> ),*) -> #remote_ret {
                options().remote(#(#names),*)
            }

            /// Per-call options; finish with `.remote(args)`.
            pub fn options() -> Options {
                Options(::manta::TaskOptions::default())
            }

            /// Per-call options of this function.
            #[derive(Clone, Debug)]
            pub struct Options(::manta::TaskOptions);

            impl Options {
                /// CPUs the task holds while it runs (default 1).
                pub fn num_cpus(self, n: f64) -> Self { Options(self.0.num_cpus(n)) }
                /// GPUs the task holds while it runs (default 0).
                pub fn num_gpus(self, n: f64) -> Self { Options(self.0.num_gpus(n)) }
                /// An amount of a custom resource the task holds while it runs.
                pub fn resource(self, name: &str, amount: f64) -> Self { Options(self.0.resource(name, amount)) }
                /// How many times to run the task again after its worker dies, or after an
                /// application error `retry_exceptions` covers (Ray's `max_retries`).
                pub fn max_retries(self, n: u32) -> Self { Options(self.0.max_retries(n)) }
                /// Whether a panic or an `Err` runs the task again (Ray's `retry_exceptions`).
                pub fn retry_exceptions(self, yes: bool) -> Self { Options(self.0.retry_exceptions(yes)) }
                /// Runs the task again when it returns `Err` of type `E`.
                pub fn retry_exceptions_of<E: 'static>(self) -> Self { Options(self.0.retry_exceptions_of::<E>()) }
                /// The task's name in errors and listings.
                pub fn name(self, name: impl Into<String>) -> Self { Options(self.0.name(name)) }
                /// Runs the task in bundle `bundle` of placement group `pg` (`None`: any).
                pub fn placement_group(self, pg: &::manta::PlacementGroup, bundle: ::core::option::Option<usize>) -> Self { Options(self.0.placement_group(pg, bundle)) }
                /// Submits the task with these options.
                pub fn remote(&self, #( #names: impl ::manta::IntoArg<#types> ),*) -> #remote_ret {
                    #submit
                }
            }
        }
    })
}

fn expand_actor_struct(item: ItemStruct) -> syn::Result<TokenStream2> {
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "actor classes cannot be generic",
        ));
    }
    let name = &item.ident;
    let vis = &item.vis;
    let methods = format_ident!("{}Methods", name);
    let doc = format!(
        "The remote methods of a [`{name}`] actor; an `ActorHandle<{name}>` derefs to this."
    );
    Ok(quote! {
        #item

        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #methods(::manta::__private::RawActorHandle);

        impl ::core::convert::From<::manta::__private::RawActorHandle> for #methods {
            fn from(raw: ::manta::__private::RawActorHandle) -> Self { #methods(raw) }
        }

        impl ::core::convert::AsRef<::manta::__private::RawActorHandle> for #methods {
            fn as_ref(&self) -> &::manta::__private::RawActorHandle { &self.0 }
        }

        impl ::manta::Actor for #name {
            type Methods = #methods;
            const CLASS: &'static ::manta::__private::ActorClass = &#name::__MANTA_CLASS;
        }
    })
}

/// A method's own retry options, from `#[method(retry_exceptions = B, max_task_retries = N)]`
/// (Ray's `@ray.method(...)`): each `None` unless given.
#[derive(Default)]
struct MethodOptions {
    retry_exceptions: Option<bool>,
    max_task_retries: Option<u32>,
}

/// Takes the `#[method(...)]` attribute off an actor method (it is read here, not expanded)
/// and parses it.
fn take_method_options(attrs: &mut Vec<syn::Attribute>) -> syn::Result<MethodOptions> {
    let mut out = MethodOptions::default();
    let mut err = None;
    attrs.retain(|a| {
        if a.path().segments.last().is_none_or(|s| s.ident != "method") {
            return true;
        }
        let parsed = a.parse_nested_meta(|meta| {
            if meta.path.is_ident("retry_exceptions") {
                let v: syn::LitBool = meta.value()?.parse()?;
                out.retry_exceptions = Some(v.value);
                Ok(())
            } else if meta.path.is_ident("max_task_retries") {
                let v: syn::LitInt = meta.value()?.parse()?;
                out.max_task_retries = Some(v.base10_parse()?);
                Ok(())
            } else {
                Err(meta.error(
                    "#[method] takes `retry_exceptions = true|false` and `max_task_retries = N`",
                ))
            }
        });
        if let Err(e) = parsed {
            err.get_or_insert(e);
        }
        false
    });
    match err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

fn expand_actor_impl(mut item: ItemImpl) -> syn::Result<TokenStream2> {
    if !item.generics.params.is_empty() {
        return Err(syn::Error::new(
            item.generics.span(),
            "actor classes cannot be generic",
        ));
    }
    if let Some((_, path, _)) = &item.trait_ {
        return Err(syn::Error::new(
            path.span(),
            "#[actor] goes on the inherent impl block, not a trait impl",
        ));
    }
    let name = match &*item.self_ty {
        Type::Path(p) => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    }
    .ok_or_else(|| syn::Error::new(item.self_ty.span(), "#[actor] needs a named struct type"))?;
    let methods_ty = format_ident!("{}Methods", name);
    let options_ty = format_ident!("{}Options", name);

    let mut constructor = None;
    let mut proxies = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let options = take_method_options(&mut f.attrs)?;
        let f = &*f;
        let sig = &f.sig;
        match sig.inputs.first() {
            Some(FnArg::Receiver(r)) => {
                if r.reference.is_none() {
                    return Err(syn::Error::new(
                        r.span(),
                        "actor methods take &self or &mut self",
                    ));
                }
                if !sig.generics.params.is_empty() {
                    return Err(syn::Error::new(
                        sig.generics.span(),
                        "actor methods cannot be generic",
                    ));
                }
                let mutable = r.mutability.is_some();
                let Args { names, types } = typed_args(sig.inputs.iter().skip(1))?;
                let ret = return_type(&sig.output);
                let method = &sig.ident;
                let vis = &f.vis;
                let label = format!("{name}::{method}");
                let body = if sig.asyncness.is_some() {
                    quote!(::manta::block_on(__this.#method(#(#names),*)))
                } else {
                    quote!(__this.#method(#(#names),*))
                };
                let access = if mutable {
                    quote!(with_mut)
                } else {
                    quote!(with_ref)
                };
                let doc = format!(
                    "Calls [`{name}::{method}`] on the actor; returns its result as an object."
                );
                let retry = match options.retry_exceptions {
                    Some(b) => quote!(::core::option::Option::Some(#b)),
                    None => quote!(::core::option::Option::None),
                };
                let count = match options.max_task_retries {
                    Some(n) => quote!(::core::option::Option::Some(#n)),
                    None => quote!(::core::option::Option::None),
                };
                let retries =
                    if options.retry_exceptions.is_some() || options.max_task_retries.is_some() {
                        quote!(.with_retries(#retry, #count))
                    } else {
                        quote!()
                    };
                proxies.push(quote! {
                    #[doc = #doc]
                    #[allow(clippy::too_many_arguments)]
                    #vis fn #method(&self, #( #names: impl ::manta::IntoArg<#types> ),*) -> ::manta::ObjectRef<#ret> {
                        fn __invoke(
                            __state: &::manta::__private::ActorState,
                            __args: &mut ::manta::__private::ArgReader<'_>,
                        ) -> ::core::result::Result<::manta::__private::ObjectValue, ::manta::Error> {
                            #( let #names: #types = __args.next()?; )*
                            let __out: #ret = __state.#access::<#name, _>(|__this| #body)?;
                            ::manta::__private::encode(&__out)
                        }
                        static __METHOD: ::manta::__private::ActorMethod =
                            ::manta::__private::ActorMethod::new(
                                ::core::concat!(::core::module_path!(), "::", #label),
                                __invoke,
                            )#retries;
                        ::manta::__private::inventory::submit! {
                            ::manta::__private::MethodRegistration(&__METHOD)
                        }
                        self.0.call(&__METHOD, ::std::vec![#( ::manta::IntoArg::into_slot(#names) ),*])
                    }
                });
            }
            _ if sig.ident == "new" => {
                constructor = Some((typed_args(sig.inputs.iter())?, f.vis.clone()))
            }
            _ => {}
        }
    }
    let (Args { names, types }, ctor_vis) = constructor.ok_or_else(|| {
        syn::Error::new(
            item.self_ty.span(),
            "an #[actor] impl needs a constructor `fn new(..) -> Self`",
        )
    })?;
    let doc_options =
        format!("Options for creating a [`{name}`] actor; finish with `.remote(args)`.");
    Ok(quote! {
        #item

        impl #name {
            #[doc(hidden)]
            pub const __MANTA_CLASS: ::manta::__private::ActorClass = ::manta::__private::ActorClass::new(
                ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#name)),
                #name::__manta_construct,
            );

            fn __manta_construct(
                __args: &mut ::manta::__private::ArgReader<'_>,
            ) -> ::core::result::Result<::manta::__private::BoxedState, ::manta::Error> {
                #( let #names: #types = __args.next()?; )*
                ::core::result::Result::Ok(::std::boxed::Box::new(#name::new(#(#names),*)))
            }

            /// Creates the actor with default options; its constructor runs on a slot.
            #ctor_vis fn remote(#( #names: impl ::manta::IntoArg<#types> ),*) -> ::manta::ActorHandle<#name> {
                #name::options().remote(#(#names),*)
            }

            /// Options for creating the actor.
            #ctor_vis fn options() -> #options_ty {
                #options_ty(::manta::ActorOptions::default())
            }
        }

        #[doc = #doc_options]
        #[derive(Clone, Debug)]
        #ctor_vis struct #options_ty(::manta::ActorOptions);

        impl #options_ty {
            /// CPUs the actor holds for its whole life (default 0).
            pub fn num_cpus(self, n: f64) -> Self { #options_ty(self.0.num_cpus(n)) }
            /// GPUs the actor holds for its whole life (default 0).
            pub fn num_gpus(self, n: f64) -> Self { #options_ty(self.0.num_gpus(n)) }
            /// An amount of a custom resource the actor holds for its whole life.
            pub fn resource(self, name: &str, amount: f64) -> Self { #options_ty(self.0.resource(name, amount)) }
            /// How many calls may run at once (default 1, in submission order).
            pub fn max_concurrency(self, n: usize) -> Self { #options_ty(self.0.max_concurrency(n)) }
            /// How many times the actor is restarted after its worker process dies, or by
            /// `manta::restart` (default 0).
            pub fn max_restarts(self, n: u32) -> Self { #options_ty(self.0.max_restarts(n)) }
            /// How many times a call running when the actor's worker died runs again on the
            /// restarted actor (default 0); with `retry_exceptions`, also a call whose method
            /// panicked.
            pub fn max_task_retries(self, n: u32) -> Self { #options_ty(self.0.max_task_retries(n)) }
            /// Whether a call whose method panics runs again, up to `max_task_retries` times
            /// (Ray's `retry_exceptions=True`).
            pub fn retry_exceptions(self, yes: bool) -> Self { #options_ty(self.0.retry_exceptions(yes)) }
            /// Runs a call again when its method panics with a payload of type `E` (a
            /// registered error type), up to `max_task_retries` times.
            pub fn retry_exceptions_of<E: 'static>(self) -> Self { #options_ty(self.0.retry_exceptions_of::<E>()) }
            /// Registers the actor under a name for `manta::get_actor`, in the job's namespace.
            /// Unless detached, it still dies with its last handle.
            pub fn name(self, name: impl Into<String>) -> Self { #options_ty(self.0.name(name)) }
            /// The namespace of the actor's name (default: the job's, `Config::namespace`).
            pub fn namespace(self, namespace: impl Into<String>) -> Self { #options_ty(self.0.namespace(namespace)) }
            /// Makes the actor outlive its handles and its driver, until `manta::kill`.
            pub fn lifetime_detached(self) -> Self { #options_ty(self.0.lifetime_detached()) }
            /// Creates the actor in bundle `bundle` of placement group `pg` (`None`: any).
            pub fn placement_group(self, pg: &::manta::PlacementGroup, bundle: ::core::option::Option<usize>) -> Self { #options_ty(self.0.placement_group(pg, bundle)) }
            /// Makes the actor a member of an actor group (see `manta::ActorGroup::spawn`).
            pub fn group_member(self, member: &::manta::GroupMember) -> Self { #options_ty(self.0.group_member(member)) }
            /// Creates the actor with these options.
            pub fn remote(&self, #( #names: impl ::manta::IntoArg<#types> ),*) -> ::manta::ActorHandle<#name> {
                ::manta::__private::create_actor::<#name>(
                    ::std::vec![#( ::manta::IntoArg::into_slot(#names) ),*],
                    &self.0,
                )
            }
        }

        ::manta::__private::inventory::submit! {
            ::manta::__private::ClassRegistration(&#name::__MANTA_CLASS)
        }

        impl #methods_ty {
            #(#proxies)*
        }
    })
}
