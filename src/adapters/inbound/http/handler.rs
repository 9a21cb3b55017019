//! One request: authorization, limits, the body read and taken in through the intake, and the
//! answer (`202` after the commit, or the reply of a `response: reply` route).

use super::*;

impl Handler {
    /// Answers one request; `closing` (the route removed, the engine stopping) cuts a body
    /// still arriving, so a client trickling one cannot hold the shutdown.
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
        remote: SocketAddr,
        closing: &CancellationToken,
    ) -> Answer {
        let cfg = &self.cfg;
        let path = req.uri().path().to_string();
        if !cfg.paths.contains(&path) {
            return problem(StatusCode::NOT_FOUND, format!("no route listens on {path}"));
        }
        let method = req.method().as_str().to_ascii_uppercase();
        if !cfg.methods.iter().any(|m| m.eq_ignore_ascii_case(&method)) {
            return problem(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{method} is not accepted here; use {}",
                    cfg.methods.join(" or ")
                ),
            );
        }
        // Credentials first: an unauthenticated client never gets its body read.
        if let Some(auth) = &cfg.auth {
            if !authorized(auth, req.headers().get(hyper::header::AUTHORIZATION)) {
                let mut r = problem(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
                let scheme = if auth.bearer.is_empty() {
                    "Basic realm=\"switchyard\""
                } else {
                    "Bearer"
                };
                r.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static(scheme));
                return r;
            }
        }
        let max = cfg.max_body.0;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max) {
            return problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over this route's limit of {}", cfg.max_body),
            );
        }
        let headers = self.message_headers(&req, remote);
        let body = Limited::new(req.into_body(), max as usize);
        let reading = tokio::time::timeout(cfg.body_timeout.0, body.collect());
        let read = tokio::select! {
            r = reading => r,
            _ = closing.cancelled() => return closing_answer(),
        };
        let body = match read {
            Err(_) => {
                return problem(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {:?}", cfg.body_timeout.0),
                )
            }
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is over this route's limit of {}", cfg.max_body),
                )
            }
            Ok(Err(e)) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                )
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        if let Some(error) = self.content_error(&body) {
            return match self.intake.refuse(headers, &error).await {
                Ok(id) => json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "id": id, "error": error }),
                ),
                Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            };
        }
        match cfg.response {
            ResponseMode::Ack => match self.intake.submit_once(headers, body, None).await {
                // Every accepted request's answer: written out rather than built as a JSON
                // value (an id needs no escaping).
                Ok(Submitted::New(id)) => answer(
                    StatusCode::ACCEPTED,
                    "application/json",
                    format!(r#"{{"id":"{id}","status":"accepted"}}"#),
                ),
                // Taken (recorded as a duplicate): the sender must not send it again.
                Ok(Submitted::Duplicate { id, first }) => json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "id": id, "status": "duplicate", "duplicate_of": first }),
                ),
                Err(e) => problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not stored, send it again: {e}"),
                ),
            },
            ResponseMode::Reply => match self
                .intake
                .submit_and_wait(headers, body, cfg.reply_timeout.0)
                .await
            {
                Err(e) => problem(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not stored, send it again: {e}"),
                ),
                Ok((id, None)) => json(
                    StatusCode::GATEWAY_TIMEOUT,
                    serde_json::json!({
                        "id": id,
                        "error": format!("no result within {:?}; the message is stored and will still be processed", cfg.reply_timeout.0),
                    }),
                ),
                Ok((id, Some(reply))) => reply_answer(id, reply),
            },
        }
    }

    /// Request facts the steps can use. `Authorization` is never stored.
    pub(super) fn message_headers(&self, req: &Request<Incoming>, remote: SocketAddr) -> Headers {
        let mut h = Headers::new();
        h.insert("http.method".into(), req.method().to_string());
        h.insert("http.path".into(), req.uri().path().to_string());
        h.insert("http.remote".into(), remote.to_string());
        if let Some(q) = req.uri().query() {
            h.insert("http.query".into(), q.to_string());
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                h.insert(format!("http.query.{k}"), v.into_owned());
            }
        }
        for (name, value) in req.headers() {
            if name == hyper::header::AUTHORIZATION || name == hyper::header::COOKIE {
                continue;
            }
            if let Ok(v) = value.to_str() {
                h.insert(format!("http.header.{}", name.as_str()), v.to_string());
            }
        }
        if let Some(ct) = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
        {
            h.insert("content-type".into(), ct.to_string());
        }
        // The route declared the content and the body was checked against it: the steps take
        // it as such whatever the caller labelled it (`http.header.content-type` keeps that).
        let declared = match self.cfg.content {
            Content::Json => Some(("json", "application/json")),
            Content::Xml => Some(("xml", "application/xml")),
            Content::Any => None,
        };
        if let Some((kind, ct)) = declared {
            if !h.get("content-type").is_some_and(|c| c.contains(kind)) {
                h.insert("content-type".into(), ct.into());
            }
        }
        h
    }

    pub(super) fn content_error(&self, body: &Bytes) -> Option<String> {
        self.cfg.content.error(body)
    }
}

pub(super) fn reply_answer(id: uuid::Uuid, reply: Reply) -> Answer {
    match reply.state {
        MessageState::Failed => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "id": id, "state": "failed", "error": reply.error }),
        ),
        // The route's `dedupe` saw its key: the first copy's answer is not kept to repeat.
        MessageState::Duplicate => json(
            StatusCode::CONFLICT,
            serde_json::json!({ "id": id, "state": "duplicate", "error": reply.error }),
        ),
        MessageState::Filtered | MessageState::Split | MessageState::Aggregating => json(
            StatusCode::OK,
            serde_json::json!({ "id": id, "state": reply.state.as_str(), "reason": reply.error }),
        ),
        _ => {
            // A step may choose the status: `headers["http.status"] = "201"`.
            let status = reply
                .headers
                .get("http.status")
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            let ctype = reply
                .headers
                .get("content-type")
                .cloned()
                .unwrap_or_else(|| "application/octet-stream".into());
            let mut r = answer(status, &ctype, reply.body);
            if let Ok(v) = HeaderValue::from_str(&id.to_string()) {
                r.headers_mut().insert("x-message-id", v);
            }
            r
        }
    }
}
