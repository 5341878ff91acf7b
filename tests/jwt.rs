//! JWT bearer tokens beside static ones: HS256, RS256 and ES256 keys from a JWKS file that is
//! reloaded when it changes; `exp`, `nbf`, `aud` and `iss` checked; the principal from a
//! claim, to which the resume token stays bound. Through the real server.

mod common;

use std::{sync::Arc, time::Duration};

use arcp_gateway::{
    auth::{
        jwt::{JwtSettings, JwtVerifier},
        Authenticator,
    },
    config::GatewayConfig,
    error::ErrorCode,
    ids::Principal,
    Gateway,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const ISSUER: &str = "https://idp.example";
const AUDIENCE: &str = "arcp-gateway";
const HS_SECRET: &[u8] = b"a shared secret of the test, 32+ bytes long";
/// An RSA key made once for these tests (`openssl genrsa -traditional 2048`), and its JWK.
const RS_PEM: &[u8] = include_bytes!("fixtures/jwt-rs256.pem");
const RS_JWK: &str = include_str!("fixtures/jwt-rs256.jwk.json");

/// The signing keys, and the JWKS that holds their public halves.
struct Keys {
    es: rcgen::KeyPair,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            es: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a P-256 key"),
        }
    }

    fn jwks(&self) -> Value {
        let mut rs: Value = serde_json::from_str(RS_JWK).expect("the RSA JWK");
        rs["kid"] = json!("rs-1");
        rs["alg"] = json!("RS256");
        json!({"keys": [
            {"kty": "oct", "kid": "hs-1", "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(HS_SECRET)},
            rs,
            es_jwk(&self.es, "es-1"),
        ]})
    }

    fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let (kid, key) = match alg {
            Algorithm::HS256 => ("hs-1", EncodingKey::from_secret(HS_SECRET)),
            Algorithm::RS256 => ("rs-1", EncodingKey::from_rsa_pem(RS_PEM).expect("RSA PEM")),
            Algorithm::ES256 => ("es-1", EncodingKey::from_ec_der(&self.es.serialize_der())),
            other => panic!("no key for {other:?}"),
        };
        sign_with(alg, kid, &key, claims)
    }
}

fn es_jwk(key: &rcgen::KeyPair, kid: &str) -> Value {
    let point = key.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..]),
    })
}

fn sign_with(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.into());
    encode(&header, claims, key).expect("signed")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims that hold: alice, for this audience, from this issuer, valid for ten minutes.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now(), "nbf": now() - 1, "exp": now() + 600})
}

/// A gateway accepting the static token `static-token` as `alice` and JWTs signed by `keys`.
struct JwtServer {
    server: TestServer,
    dir: ScratchDir,
    verifier: Arc<JwtVerifier>,
}

async fn jwt_server(keys: &Keys, tweak: impl FnOnce(&mut JwtSettings)) -> JwtServer {
    let dir = ScratchDir::new("jwks");
    std::fs::write(dir.path("jwks.json"), keys.jwks().to_string()).expect("write the JWKS");
    let mut settings = JwtSettings::new(dir.path("jwks.json"));
    settings.issuer = Some(ISSUER.into());
    settings.audience = Some(AUDIENCE.into());
    settings.leeway = Duration::from_secs(5);
    settings.reload_interval = Duration::from_millis(20);
    tweak(&mut settings);
    let verifier = JwtVerifier::load(settings).expect("the JWKS loads");
    JwtVerifier::watch(&verifier);
    let auth = Authenticator::from_pairs([("static-token".to_string(), Principal::new("alice"))])
        .with_jwt(verifier.clone());
    let server =
        TestServer::start_gateway(Gateway::builder(GatewayConfig::default()).auth(auth)).await;
    JwtServer {
        server,
        dir,
        verifier,
    }
}

/// The first frame answering a hello with `token`.
async fn hello_answer(server: &TestServer, token: &str) -> arcp_gateway::proto::ServerFrame {
    let mut conn = server.open().await;
    conn.send(hello(token, FEATURES, None)).await;
    conn.recv().await
}

/// Asserts a hello with `token` is refused as UNAUTHENTICATED, saying `why`.
async fn refused(server: &TestServer, token: &str, why: &str) {
    let frame = hello_answer(server, token).await;
    let error = expect_error(&frame, ErrorCode::Unauthenticated, None);
    assert!(
        error.message.contains(why),
        "{why:?} in {:?}",
        error.message
    );
    assert!(!error.message.contains(token), "the token is not echoed");
}

#[tokio::test]
async fn tokens_signed_with_each_algorithm_open_sessions() {
    let keys = Keys::new();
    let s = jwt_server(&keys, |_| {}).await;
    for alg in [Algorithm::HS256, Algorithm::RS256, Algorithm::ES256] {
        let token = keys.sign(alg, &claims("alice"));
        let frame = hello_answer(&s.server, &token).await;
        welcome(&frame);
    }
    // Static tokens keep working beside them.
    welcome(&hello_answer(&s.server, "static-token").await);
    refused(&s.server, "not-a-known-token", "bearer token refused").await;
}

#[tokio::test]
async fn claims_that_do_not_hold_are_refused_each_with_its_reason() {
    let keys = Keys::new();
    let s = jwt_server(&keys, |_| {}).await;
    let with = |patch: Value| {
        let mut c = claims("alice");
        for (k, v) in patch.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let expired = keys.sign(Algorithm::ES256, &with(json!({"exp": now() - 60})));
    refused(&s.server, &expired, "expired").await;
    let early = keys.sign(Algorithm::ES256, &with(json!({"nbf": now() + 60})));
    refused(&s.server, &early, "not valid yet").await;
    let audience = keys.sign(Algorithm::RS256, &with(json!({"aud": "someone-else"})));
    refused(&s.server, &audience, "wrong audience").await;
    let issuer = keys.sign(
        Algorithm::HS256,
        &with(json!({"iss": "https://evil.example"})),
    );
    refused(&s.server, &issuer, "wrong issuer").await;
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let no_exp = keys.sign(Algorithm::HS256, &no_exp);
    refused(&s.server, &no_exp, "required claim").await;
    // Within the leeway, an expiry just past still holds.
    let just = keys.sign(Algorithm::ES256, &with(json!({"exp": now() - 2})));
    welcome(&hello_answer(&s.server, &just).await);
}

#[tokio::test]
async fn wrong_keys_and_alg_none_are_refused() {
    let keys = Keys::new();
    let s = jwt_server(&keys, |_| {}).await;
    let other_secret = EncodingKey::from_secret(b"another secret, not in the JWKS at all");
    let forged = sign_with(Algorithm::HS256, "hs-1", &other_secret, &claims("alice"));
    refused(&s.server, &forged, "signature does not verify").await;
    let stranger = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = sign_with(
        Algorithm::ES256,
        "es-1",
        &EncodingKey::from_ec_der(&stranger.serialize_der()),
        &claims("alice"),
    );
    refused(&s.server, &forged, "signature does not verify").await;
    // The RSA key's public modulus as an HMAC secret: the key is RS256 only.
    let rs: Value = serde_json::from_str(RS_JWK).unwrap();
    let confused = EncodingKey::from_secret(rs["n"].as_str().unwrap().as_bytes());
    let forged = sign_with(Algorithm::HS256, "rs-1", &confused, &claims("alice"));
    refused(&s.server, &forged, "no key").await;
    // alg none: no signature at all.
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let body = URL_SAFE_NO_PAD.encode(claims("alice").to_string());
    refused(
        &s.server,
        &format!("{header}.{body}."),
        "supported algorithm",
    )
    .await;
}

#[tokio::test]
async fn the_principal_is_the_configured_claim_and_the_resume_token_stays_bound_to_it() {
    let keys = Keys::new();
    let s = jwt_server(&keys, |settings| {
        settings.principal_claim = "email".into();
    })
    .await;
    let mut as_alice = claims("ignored-subject");
    as_alice["email"] = json!("alice");
    let token = keys.sign(Algorithm::RS256, &as_alice);
    let frame = hello_answer(&s.server, &token).await;
    let (session, resume_token) = (
        frame.session_id.clone(),
        welcome(&frame).resume_token.clone(),
    );
    // Another principal's JWT cannot resume it.
    let mut as_bob = claims("alice");
    as_bob["email"] = json!("bob");
    let bob = keys.sign(Algorithm::RS256, &as_bob);
    let (_c, first) = s
        .server
        .resume_with_hello(&bob, FEATURES, resume_info(&session, &resume_token, 0))
        .await;
    expect_error(&first, ErrorCode::PermissionDenied, None);
    // The static token of the same principal can: both name `alice`.
    let (_c, first) = s
        .server
        .resume_with_hello(
            "static-token",
            FEATURES,
            resume_info(&session, &resume_token, 0),
        )
        .await;
    welcome(&first);
    assert_eq!(first.session_id, session);
    // A token without the claim names nobody.
    let no_email = keys.sign(Algorithm::RS256, &claims("alice"));
    refused(&s.server, &no_email, "no email claim").await;
}

#[tokio::test]
async fn a_changed_jwks_is_picked_up_and_a_broken_one_keeps_the_keys_in_use() {
    let keys = Keys::new();
    let s = jwt_server(&keys, |_| {}).await;
    let newcomer = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let token = sign_with(
        Algorithm::ES256,
        "es-2",
        &EncodingKey::from_ec_der(&newcomer.serialize_der()),
        &claims("alice"),
    );
    refused(&s.server, &token, "no key").await;
    // A broken file is refused; the keys in use stay.
    std::fs::write(s.dir.path("jwks.json"), "{not json").unwrap();
    let error = s.verifier.reload().expect_err("a broken JWKS is refused");
    assert!(error.to_string().contains("not a JWKS"), "{error}");
    let old = keys.sign(Algorithm::HS256, &claims("alice"));
    welcome(&hello_answer(&s.server, &old).await);
    // The new key added: accepted once the file is reloaded.
    let mut jwks = keys.jwks();
    jwks["keys"]
        .as_array_mut()
        .unwrap()
        .push(es_jwk(&newcomer, "es-2"));
    let path = s.dir.path("jwks.json");
    std::fs::write(path.with_extension("new"), jwks.to_string()).unwrap();
    std::fs::rename(path.with_extension("new"), &path).unwrap();
    eventually("the new JWKS key is accepted", || async {
        let frame = hello_answer(&s.server, &token).await;
        matches!(
            frame.payload,
            Some(arcp_gateway::proto::server_frame::Payload::SessionWelcome(
                _
            ))
        )
    })
    .await;
    welcome(&hello_answer(&s.server, &old).await);
}
