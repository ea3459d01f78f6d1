// Package oidc runs Trellis against a real OpenID provider, Ory Hydra
// (github.com/ory/hydra/v2, built from tools/hydra), that the test starts
// with an in-memory store: discovery, the provider's JWKS, client-
// credentials access tokens in JWT form, accepted by Trellis with
// --oidc-issuer as machine principals with scopes. No fake key server.
//
// The test has the build tag oidc: `make oidc` runs it (CI does).
package oidc
