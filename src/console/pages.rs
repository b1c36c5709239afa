//! The console's HTML: every page, rendered on the server with maud (which escapes
//! everything it is given), every word from the user's catalogue. The live board's
//! tables are filled by `static/app.js` from the board events; everything else works
//! without script. Pure code: data in, markup out.

use super::dates::Calendar;
use super::i18n::{lookup, script_texts, tr, trf, Lang};
use crate::store::console::{AuditRow, Handled, InboxRow, Note, Outcome};
use crate::store::{CallRow, OperatorRow, Role};
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// Who is looking, in which language.
pub struct PageCtx<'a> {
    pub lang: Lang,
    pub account: &'a str,
    pub user: &'a str,
    pub role: Role,
    pub csrf: &'a str,
    pub cal: &'a Calendar,
    /// The server holds an identity (`hotline unseal`): sealed recordings play.
    pub unsealed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Board,
    Inbox,
    History,
    Operators,
    Audit,
    None,
}

fn csrf_field(ctx: &PageCtx) -> Markup {
    html! { input type="hidden" name="csrf" value=(ctx.csrf); }
}

pub fn role_name(lang: Lang, role: Role) -> &'static str {
    match role {
        Role::Operator => tr(lang, "role.operator"),
        Role::Supervisor => tr(lang, "role.supervisor"),
    }
}

pub fn outcome_name(lang: Lang, o: Outcome) -> &'static str {
    match o {
        Outcome::Operator => tr(lang, "outcome.operator"),
        Outcome::Voicemail => tr(lang, "outcome.voicemail"),
        Outcome::Abandoned => tr(lang, "outcome.abandoned"),
        Outcome::Ivr => tr(lang, "outcome.ivr"),
    }
}

pub fn state_name(lang: Lang, state: &str) -> &'static str {
    match state {
        "offline" => tr(lang, "state.offline"),
        "available" => tr(lang, "state.available"),
        "ringing" => tr(lang, "state.ringing"),
        "on_call" => tr(lang, "state.on_call"),
        "wrap_up" => tr(lang, "state.wrap_up"),
        "paused" => tr(lang, "state.paused"),
        _ => tr(lang, "state.unknown"),
    }
}

/// Seconds as `m:ss` (or `h:mm:ss`).
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn answers_text(answers: &[(String, String)]) -> String {
    answers
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn is_locked(sealed: &Option<String>) -> bool {
    sealed.as_deref() == Some(crate::store::sealed_view::LOCKED)
}

/// Where sealed details would be.
fn sealed_mark(lang: Lang) -> Markup {
    html! { span.sealed { (tr(lang, "sealed.value")) } }
}

/// A player, or "sealed" while a sealed recording cannot be opened.
fn player(ctx: &PageCtx, recording_id: i64, sealed_file: bool) -> Markup {
    html! {
        @if sealed_file && !ctx.unsealed {
            span.sealed.recording-sealed { (tr(ctx.lang, "sealed.recording")) }
        } @else {
            audio controls preload="none" src={ "/recordings/" (recording_id) } {}
        }
    }
}

fn head(lang: Lang, title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · " (tr(lang, "app.name")) }
            link rel="stylesheet" href="/static/app.css";
            script src="/static/app.js" defer {}
        }
    }
}

/// A page of a logged-in user: navigation, language switch, logout, `body`.
pub fn layout(ctx: &PageCtx, title: &str, current: Nav, body: Markup) -> Markup {
    let l = ctx.lang;
    let link = |nav: Nav, href: &str, key: &str| {
        html! {
            a href=(href) aria-current=[(nav == current).then_some("page")] { (tr(l, key)) }
        }
    };
    html! {
        (DOCTYPE)
        html lang=(l.code()) {
            (head(l, title))
            body data-user=(ctx.user) data-role=(ctx.role.as_str()) data-lang=(l.code()) {
                header.top {
                    span.brand { (tr(l, "app.name")) }
                    nav {
                        (link(Nav::Board, "/", "nav.board"))
                        (link(Nav::Inbox, "/inbox", "nav.inbox"))
                        (link(Nav::History, "/history", "nav.history"))
                        @if ctx.role == Role::Supervisor {
                            (link(Nav::Operators, "/admin/operators", "nav.operators"))
                            (link(Nav::Audit, "/admin/audit", "nav.audit"))
                        }
                    }
                    div.who {
                        span.account { (ctx.account) " · " (role_name(l, ctx.role)) }
                        form.inline method="post" action="/language" {
                            (csrf_field(ctx))
                            label.sr for="lang" { (tr(l, "nav.language")) }
                            select #lang name="lang" {
                                @for other in Lang::ALL {
                                    option value=(other.code()) selected[other == l] { (other.own_name()) }
                                }
                            }
                            button type="submit" { (tr(l, "nav.language_apply")) }
                        }
                        form.inline method="post" action="/logout" {
                            (csrf_field(ctx))
                            button type="submit" { (tr(l, "nav.logout")) }
                        }
                    }
                }
                main { (body) }
                meta #csrf name="csrf" content=(ctx.csrf);
                script #texts type="application/json" { (PreEscaped(script_texts(l))) }
            }
        }
    }
}

pub fn login(lang: Lang, csrf: &str, name: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(lang, tr(lang, "login.title")))
            body.login {
                main.login {
                    h1 { (tr(lang, "app.name")) }
                    form method="post" action="/login" {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="hidden" name="lang" value=(lang.code());
                        label for="name" { (tr(lang, "login.name")) }
                        input #name type="text" name="name" value=(name) autocomplete="username" required autofocus;
                        label for="password" { (tr(lang, "login.password")) }
                        input #password type="password" name="password" autocomplete="current-password" required;
                        @if let Some(e) = error {
                            p.error role="alert" { (e) }
                        }
                        button type="submit" { (tr(lang, "login.submit")) }
                    }
                    p.languages {
                        @for other in Lang::ALL {
                            a href={ "/login?lang=" (other.code()) } lang=(other.code()) { (other.own_name()) }
                            " "
                        }
                    }
                }
            }
        }
    }
}

pub fn board(ctx: &PageCtx) -> Markup {
    let l = ctx.lang;
    let body = html! {
        h1 { (tr(l, "board.title")) }
        p #board-status.status aria-live="polite" { (tr(l, "board.connecting")) }
        section #my-offer.offer hidden {
            h2 { (tr(l, "board.your_offer")) }
            dl {
                dt { (tr(l, "board.answers")) } dd #offer-answers {}
                dt { (tr(l, "board.reference")) } dd #offer-reference {}
                dt { (tr(l, "board.waited")) } dd #offer-waited {}
            }
        }
        section.counters {
            h2 { (tr(l, "board.today")) }
            dl {
                dt { (tr(l, "board.answered")) } dd #count-answered { "–" }
                dt { (tr(l, "board.abandoned")) } dd #count-abandoned { "–" }
                dt { (tr(l, "board.voicemails")) } dd #count-voicemails { "–" }
            }
        }
        section {
            h2 { (tr(l, "board.waiting")) " " span #waiting-count.count {} }
            table #callers {
                thead { tr {
                    th { (tr(l, "board.position")) }
                    th { (tr(l, "board.waited")) }
                    th { (tr(l, "board.priority")) }
                    th { (tr(l, "board.answers")) }
                    th { (tr(l, "board.reference")) }
                    th { (tr(l, "board.offered_to")) }
                } }
                tbody {}
            }
            p #no-callers hidden { (tr(l, "board.no_callers")) }
        }
        section {
            h2 { (tr(l, "board.operators")) }
            table #operators {
                thead { tr {
                    th { (tr(l, "board.operator")) }
                    th { (tr(l, "board.state")) }
                    th { (tr(l, "board.in_state")) }
                    th { (tr(l, "board.phones")) }
                    th { (tr(l, "board.misses")) }
                    th { (tr(l, "board.actions")) }
                } }
                tbody {}
            }
            p #no-operators hidden { (tr(l, "board.no_operators")) }
            p #state-error.error role="alert" hidden {}
        }
    };
    layout(ctx, tr(l, "board.title"), Nav::Board, body)
}

/// What a reference search found.
pub enum Search {
    None,
    /// The code as typed found these calls.
    Found(String, Vec<CallRow>),
    /// The code's check digit failed; these calls have codes one slip away.
    Corrected(String, Vec<CallRow>),
    Invalid(String, String),
    NotFound(String),
}

fn call_rows(ctx: &PageCtx, calls: &[CallRow]) -> Markup {
    let l = ctx.lang;
    html! {
        table.calls {
            thead { tr {
                th { (tr(l, "call.started")) }
                th { (tr(l, "call.reference")) }
                th { (tr(l, "call.outcome")) }
                th { (tr(l, "call.answers")) }
                th {}
            } }
            tbody {
                @for c in calls {
                    tr data-call-id=(c.id) {
                        td { (ctx.cal.show(&c.started_at)) }
                        td.reference { (c.reference.as_deref().unwrap_or("–")) }
                        td { (outcome_name(l, Outcome::of(c))) }
                        td.answers {
                            @if is_locked(&c.sealed) { (sealed_mark(l)) }
                            @else { (answers_text(&c.answers.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect::<Vec<_>>())) }
                        }
                        td { a href={ "/calls/" (c.id) } { (tr(l, "call.open")) } }
                    }
                }
            }
        }
    }
}

pub fn inbox(ctx: &PageCtx, rows: &[InboxRow], search: &Search, page: usize, more: bool) -> Markup {
    let l = ctx.lang;
    let typed = match search {
        Search::Found(c, _)
        | Search::Corrected(c, _)
        | Search::Invalid(c, _)
        | Search::NotFound(c) => c.as_str(),
        Search::None => "",
    };
    let body = html! {
        h1 { (tr(l, "inbox.title")) }
        form.search method="get" action="/inbox" {
            label for="ref" { (tr(l, "inbox.search_label")) }
            input #ref type="search" name="ref" value=(typed) inputmode="numeric" autocomplete="off" maxlength="20";
            button type="submit" { (tr(l, "inbox.search")) }
        }
        @match search {
            Search::None => {}
            Search::Found(_, calls) => {
                section #search-results {
                    h2 { (tr(l, "inbox.found")) }
                    (call_rows(ctx, calls))
                }
            }
            Search::Corrected(code, calls) => {
                section #search-results {
                    p.notice { (trf(l, "inbox.check_digit_failed", &[("code", code)])) }
                    @if calls.is_empty() {
                        p { (tr(l, "inbox.not_found")) }
                    } @else {
                        h2 { (tr(l, "inbox.did_you_mean")) }
                        (call_rows(ctx, calls))
                    }
                }
            }
            Search::Invalid(_, why) => {
                section #search-results { p.error { (why) } }
            }
            Search::NotFound(code) => {
                section #search-results { p { (trf(l, "inbox.no_call_with", &[("code", code)])) } }
            }
        }
        h2 { (tr(l, "inbox.messages")) }
        @if rows.is_empty() {
            p { (tr(l, "inbox.empty")) }
        } @else {
            table #inbox {
                thead { tr {
                    th { (tr(l, "inbox.when")) }
                    th { (tr(l, "inbox.duration")) }
                    th { (tr(l, "call.reference")) }
                    th { (tr(l, "call.answers")) }
                    th { (tr(l, "inbox.listen")) }
                    th { (tr(l, "inbox.status")) }
                    th {}
                } }
                tbody {
                    @for r in rows {
                        tr.handled[r.handled.is_some()] data-call-id=(r.call_id) data-recording-id=(r.recording_id) {
                            td { (ctx.cal.show(&r.created_at)) }
                            td { (duration(r.duration_ms)) @if r.partial { " " span.badge { (tr(l, "inbox.partial")) } } }
                            td.reference { (r.reference.as_deref().unwrap_or("–")) }
                            td.answers { @if is_locked(&r.sealed) { (sealed_mark(l)) } @else { (answers_text(&r.answers)) } }
                            td { (player(ctx, r.recording_id, r.recording_sealed)) }
                            td.status {
                                @if let Some(h) = &r.handled {
                                    (trf(l, "inbox.handled_by", &[("name", &h.by)]))
                                } @else {
                                    strong { (tr(l, "inbox.unhandled")) }
                                }
                                @if r.notes > 0 { " · " (trf(l, "inbox.notes", &[("n", &r.notes.to_string())])) }
                            }
                            td { a href={ "/calls/" (r.call_id) } { (tr(l, "call.open")) } }
                        }
                    }
                }
            }
            nav.pages {
                @if page > 0 { a href={ "/inbox?page=" (page - 1) } { (tr(l, "pages.newer")) } " " }
                @if more { a href={ "/inbox?page=" (page + 1) } { (tr(l, "pages.older")) } }
            }
        }
    };
    layout(ctx, tr(l, "inbox.title"), Nav::Inbox, body)
}

pub fn call(
    ctx: &PageCtx,
    c: &CallRow,
    recording_ids: &[i64],
    notes: &[Note],
    handled: Option<&Handled>,
) -> Markup {
    let l = ctx.lang;
    let title = trf(l, "call.title", &[("id", &c.id.to_string())]);
    let answers: Vec<(String, String)> = c
        .answers
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let sealed_file = |path: &str| path.ends_with(crate::store::seal::SEALED_SUFFIX);
    let locked = is_locked(&c.sealed)
        || notes.iter().any(|n| is_locked(&n.sealed))
        || (!ctx.unsealed && c.recordings.iter().any(|r| sealed_file(&r.path)));
    let body = html! {
        h1 { (title) }
        @if locked { p #sealed-notice.notice role="status" { (tr(l, "sealed.notice")) } }
        dl.details {
            dt { (tr(l, "call.started")) } dd { (ctx.cal.show(&c.started_at)) }
            dt { (tr(l, "call.ended")) } dd { (c.ended_at.as_deref().map(|t| ctx.cal.show(t)).unwrap_or_else(|| "–".into())) }
            dt { (tr(l, "call.outcome")) } dd #outcome { (outcome_name(l, Outcome::of(c))) }
            dt { (tr(l, "call.reference")) } dd #reference { (c.reference.as_deref().unwrap_or("–")) }
            dt { (tr(l, "call.answers")) } dd #answers { @if is_locked(&c.sealed) { (sealed_mark(l)) } @else { (answers_text(&answers)) } }
            dt { (tr(l, "call.path")) } dd #path { @if is_locked(&c.sealed) { (sealed_mark(l)) } @else { (c.path.join(" → ")) } }
            @if let Some(q) = &c.queue {
                dt { (tr(l, "call.waited")) } dd { (q.waited_ms.map(duration).unwrap_or_else(|| "–".into())) }
                dt { (tr(l, "call.operator")) } dd { (q.operator.as_deref().unwrap_or("–")) }
                dt { (tr(l, "call.talk")) } dd { (q.talk_ms.map(duration).unwrap_or_else(|| "–".into())) }
            }
            dt { (tr(l, "call.end_reason")) } dd { (c.end_reason.as_deref().unwrap_or("–")) }
        }
        section #recordings {
            h2 { (tr(l, "call.recordings")) }
            @if c.recordings.is_empty() {
                p { (tr(l, "call.no_recordings")) }
            }
            @for (r, id) in c.recordings.iter().zip(recording_ids) {
                div.recording data-recording-id=(id) data-duration-ms=(r.duration_ms) {
                    span.kind { @if r.kind == "voicemail" { (tr(l, "call.voicemail")) } @else { (tr(l, "call.conversation")) } }
                    " " span { (duration(r.duration_ms)) }
                    @if r.partial { " " span.badge { (tr(l, "inbox.partial")) } }
                    (player(ctx, *id, sealed_file(&r.path)))
                }
            }
        }
        section #handling {
            h2 { (tr(l, "call.handling")) }
            @if let Some(h) = handled {
                p #handled-state data-handled="1" { (trf(l, "call.handled_by_at", &[("name", &h.by), ("at", &ctx.cal.show(&h.at))])) }
                form method="post" action={ "/calls/" (c.id) "/handled" } {
                    (csrf_field(ctx))
                    input type="hidden" name="handled" value="0";
                    button #mark-unhandled type="submit" { (tr(l, "call.mark_unhandled")) }
                }
            } @else {
                p #handled-state data-handled="0" { (tr(l, "inbox.unhandled")) }
                form method="post" action={ "/calls/" (c.id) "/handled" } {
                    (csrf_field(ctx))
                    input type="hidden" name="handled" value="1";
                    button #mark-handled type="submit" { (tr(l, "call.mark_handled")) }
                }
            }
        }
        section #notes {
            h2 { (tr(l, "call.notes")) }
            @if notes.is_empty() { p { (tr(l, "call.no_notes")) } }
            ol.notes {
                @for n in notes {
                    li data-note-id=(n.id) {
                        div.meta { (n.author) " · " (ctx.cal.show(&n.created_at)) }
                        @if is_locked(&n.sealed) {
                            div.body.sealed { (tr(l, "sealed.note")) }
                        } @else {
                            div.body { (n.body) }
                        }
                    }
                }
            }
            form method="post" action={ "/calls/" (c.id) "/notes" } {
                (csrf_field(ctx))
                label for="note" { (tr(l, "call.add_note")) }
                textarea #note name="body" rows="4" maxlength="4000" required {}
                button #save-note type="submit" { (tr(l, "call.save_note")) }
            }
        }
    };
    layout(ctx, &title, Nav::None, body)
}

/// The history filter as typed.
pub struct HistoryForm<'a> {
    pub from: &'a str,
    pub to: &'a str,
    pub outcome: &'a str,
}

pub fn history(
    ctx: &PageCtx,
    form: &HistoryForm,
    error: Option<&str>,
    calls: &[CallRow],
    older: Option<i64>,
) -> Markup {
    let l = ctx.lang;
    let outcome_choice = |value: &str, label: &str| {
        html! { option value=(value) selected[form.outcome == value] { (label) } }
    };
    let body = html! {
        h1 { (tr(l, "history.title")) }
        form #history-filter.filter method="get" action="/history" {
            label for="from" { (tr(l, "history.from")) }
            input #from type="date" name="from" value=(form.from);
            label for="to" { (tr(l, "history.to")) }
            input #to type="date" name="to" value=(form.to);
            label for="outcome" { (tr(l, "call.outcome")) }
            select #outcome name="outcome" {
                (outcome_choice("", tr(l, "history.any")))
                @for o in Outcome::ALL { (outcome_choice(o.as_str(), outcome_name(l, o))) }
            }
            button type="submit" { (tr(l, "history.show")) }
        }
        form #export method="post" action="/history/export" {
            (csrf_field(ctx))
            input type="hidden" name="from" value=(form.from);
            input type="hidden" name="to" value=(form.to);
            input type="hidden" name="outcome" value=(form.outcome);
            button type="submit" { (tr(l, "history.export")) }
        }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        @if calls.is_empty() && error.is_none() {
            p { (tr(l, "history.empty")) }
        } @else if !calls.is_empty() {
            (call_rows(ctx, calls))
        }
        @if let Some(before) = older {
            nav.pages {
                a href={ "/history?from=" (form.from) "&to=" (form.to) "&outcome=" (form.outcome) "&before=" (before) } { (tr(l, "pages.older")) }
            }
        }
    };
    layout(ctx, tr(l, "history.title"), Nav::History, body)
}

/// A password shown once after an account was made or reset.
pub struct NewPassword<'a> {
    pub name: &'a str,
    pub sip_username: &'a str,
    pub password: &'a str,
}

pub fn operators(
    ctx: &PageCtx,
    rows: &[OperatorRow],
    shown: Option<&NewPassword>,
    message: Option<&str>,
    error: Option<&str>,
) -> Markup {
    let l = ctx.lang;
    let role_select = |id: &str, current: Role| {
        html! {
            select id=(id) name="role" {
                @for r in [Role::Operator, Role::Supervisor] {
                    option value=(r.as_str()) selected[r == current] { (role_name(l, r)) }
                }
            }
        }
    };
    let body = html! {
        h1 { (tr(l, "admin.operators_title")) }
        @if let Some(p) = shown {
            div #new-password.flash role="status" {
                p { (tr(l, "admin.password_once")) }
                dl {
                    dt { (tr(l, "admin.name")) } dd { (p.name) }
                    dt { (tr(l, "admin.sip_username")) } dd #shown-username { (p.sip_username) }
                    dt { (tr(l, "login.password")) } dd #shown-password { code { (p.password) } }
                }
            }
        }
        @if let Some(m) = message { p.notice role="status" { (m) } }
        @if let Some(e) = error { p.error role="alert" { (e) } }
        table #accounts {
            thead { tr {
                th { (tr(l, "admin.name")) }
                th { (tr(l, "admin.sip_username")) }
                th { (tr(l, "admin.role")) }
                th { (tr(l, "admin.last_state")) }
                th { (tr(l, "admin.created")) }
                th { (tr(l, "board.actions")) }
            } }
            tbody {
                @for r in rows {
                    tr data-name=(r.name) {
                        td { (r.name) }
                        td { (r.sip_username) }
                        td.role { (role_name(l, r.role)) }
                        td { (r.last_state.as_deref().map(|s| state_name(l, s)).unwrap_or("–")) }
                        td { (ctx.cal.show(&r.created_at)) }
                        td.actions {
                            @if r.name != ctx.account {
                                form.inline method="post" action="/admin/operators" {
                                    (csrf_field(ctx))
                                    input type="hidden" name="action" value="role";
                                    input type="hidden" name="name" value=(r.name);
                                    (role_select(&format!("role-{}", r.sip_username), r.role))
                                    button type="submit" { (tr(l, "admin.set_role")) }
                                }
                            }
                            form.inline method="post" action="/admin/operators" {
                                (csrf_field(ctx))
                                input type="hidden" name="action" value="passwd";
                                input type="hidden" name="name" value=(r.name);
                                button type="submit" data-confirm=(trf(l, "admin.confirm_reset", &[("name", &r.name)])) { (tr(l, "admin.reset_password")) }
                            }
                            @if r.name != ctx.account {
                                form.inline method="post" action="/admin/operators" {
                                    (csrf_field(ctx))
                                    input type="hidden" name="action" value="remove";
                                    input type="hidden" name="name" value=(r.name);
                                    button.danger type="submit" data-confirm=(trf(l, "admin.confirm_remove", &[("name", &r.name)])) { (tr(l, "admin.remove")) }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { (tr(l, "admin.add_title")) }
            form #add-operator method="post" action="/admin/operators" {
                (csrf_field(ctx))
                input type="hidden" name="action" value="add";
                label for="new-name" { (tr(l, "admin.name")) }
                input #new-name type="text" name="name" maxlength="64" required;
                label for="new-role" { (tr(l, "admin.role")) }
                (role_select("new-role", Role::Operator))
                label for="new-password" { (tr(l, "admin.password_optional")) }
                input #new-password type="password" name="password" autocomplete="new-password" minlength="8";
                button type="submit" { (tr(l, "admin.add")) }
            }
        }
    };
    layout(ctx, tr(l, "admin.operators_title"), Nav::Operators, body)
}

pub fn audit(ctx: &PageCtx, rows: &[AuditRow], older: Option<i64>) -> Markup {
    let l = ctx.lang;
    let body = html! {
        h1 { (tr(l, "audit.title")) }
        p { (tr(l, "audit.explain")) }
        table #audit {
            thead { tr {
                th { (tr(l, "audit.at")) }
                th { (tr(l, "audit.who")) }
                th { (tr(l, "audit.action")) }
                th { (tr(l, "audit.call")) }
                th { (tr(l, "audit.recording")) }
                th { (tr(l, "audit.detail")) }
            } }
            tbody {
                @for r in rows {
                    tr data-action=(r.action) {
                        td { (ctx.cal.show(&r.at)) }
                        td { (r.actor) }
                        td { (action_name(l, &r.action)) }
                        td { @if let Some(c) = r.call_id { a href={ "/calls/" (c) } { "#" (c) } } }
                        td { @if let Some(id) = r.recording_id { (id) } }
                        td { (r.detail) }
                    }
                }
            }
        }
        @if let Some(before) = older {
            nav.pages { a href={ "/admin/audit?before=" (before) } { (tr(l, "pages.older")) } }
        }
    };
    layout(ctx, tr(l, "audit.title"), Nav::Audit, body)
}

fn action_name(lang: Lang, action: &str) -> String {
    lookup(lang, &format!("audit.actions.{action}"))
        .map(str::to_string)
        .unwrap_or_else(|| action.to_string())
}

/// A refusal or failure as a page (logged in or not).
pub fn error(lang: Lang, title: &str, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang=(lang.code()) {
            (head(lang, title))
            body.error-page {
                main {
                    h1 { (title) }
                    p { (message) }
                    p { a href="/" { (tr(lang, "error.back")) } }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0:00");
        assert_eq!(duration(61_999), "1:01");
        assert_eq!(duration(3_600_000), "1:00:00");
        assert_eq!(duration(-5), "0:00");
    }

    #[test]
    fn hostile_text_is_escaped() {
        let cal = Calendar::utc();
        let ctx = PageCtx {
            lang: Lang::En,
            account: "<script>alert(1)</script>",
            user: "\"onmouseover=\"x",
            role: Role::Supervisor,
            csrf: "t",
            cal: &cal,
            unsealed: false,
        };
        let page = board(&ctx).into_string();
        assert!(!page.contains("<script>alert(1)"));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!page.contains("\"onmouseover=\"x"));
        // No inline script: every script element is external or a JSON data block.
        for (i, _) in page.match_indices("<script") {
            let tag = &page[i..i + page[i..].find('>').unwrap()];
            assert!(
                tag.contains("src=\"/static/") || tag.contains("type=\"application/json\""),
                "{tag}"
            );
        }
    }
}
