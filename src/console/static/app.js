// The console's only script (served from /static/, no inline script anywhere).
// The live board: board events from /events (server-sent events) fill the tables;
// waited times tick locally from absolute times; state buttons post to the API with
// the page's CSRF token. Elsewhere: confirmation of dangerous forms.
(function () {
  'use strict';

  var textsEl = document.getElementById('texts');
  var TEXTS = textsEl ? JSON.parse(textsEl.textContent) : {};
  function str(key) {
    return TEXTS[key] || key;
  }
  var csrfEl = document.getElementById('csrf');
  var CSRF = csrfEl ? csrfEl.getAttribute('content') : '';
  var ME = document.body.getAttribute('data-user') || '';
  var ROLE = document.body.getAttribute('data-role') || '';

  var STATES = {
    offline: str('state.offline'),
    available: str('state.available'),
    ringing: str('state.ringing'),
    on_call: str('state.on_call'),
    wrap_up: str('state.wrap_up'),
    paused: str('state.paused')
  };

  // Forms that ask before they act.
  document.addEventListener('submit', function (ev) {
    var button = ev.submitter;
    var question = button && button.getAttribute('data-confirm');
    if (question && !window.confirm(question)) {
      ev.preventDefault();
    }
  });

  var boardEl = document.getElementById('callers');
  if (!boardEl) {
    return;
  }

  var offset = 0; // local clock minus server clock, ms
  var board = null;

  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) {
      e.textContent = String(text);
    }
    if (cls) {
      e.className = cls;
    }
    return e;
  }

  function since(ms) {
    var s = Math.max(0, Math.floor((Date.now() - offset - ms) / 1000));
    var h = Math.floor(s / 3600);
    var m = Math.floor((s % 3600) / 60);
    var sec = s % 60;
    var mm = (h > 0 && m < 10 ? '0' : '') + m;
    return (h > 0 ? h + ':' : '') + mm + ':' + (sec < 10 ? '0' : '') + sec;
  }

  function answersText(answers) {
    return answers.map(function (a) { return a[0] + '=' + a[1]; }).join(', ');
  }

  function setStatus(text, ok) {
    var s = document.getElementById('board-status');
    s.textContent = text;
    s.className = 'status' + (ok ? ' live' : ' lost');
  }

  function setState(user, state, button) {
    var err = document.getElementById('state-error');
    err.hidden = true;
    button.disabled = true;
    fetch('/api/operators/state', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json', 'X-CSRF-Token': CSRF },
      body: JSON.stringify({ user: user, state: state })
    }).then(function (r) {
      return r.json().then(function (body) {
        if (!r.ok || !body.ok) {
          err.textContent = str('state_failed') + ' ' + (body.error || r.status);
          err.hidden = false;
        }
      });
    }).catch(function (e) {
      err.textContent = str('state_failed') + ' ' + e;
      err.hidden = false;
    }).then(function () {
      button.disabled = false;
    });
  }

  function renderCallers() {
    var tbody = boardEl.tBodies[0];
    var rows = document.createDocumentFragment();
    board.callers.forEach(function (c) {
      var tr = el('tr');
      tr.setAttribute('data-call', c.call);
      tr.setAttribute('data-since', c.waiting_since_ms);
      tr.appendChild(el('td', c.position));
      tr.appendChild(el('td', since(c.waiting_since_ms), 'waited'));
      tr.appendChild(el('td', c.priority));
      tr.appendChild(el('td', answersText(c.answers), 'answers'));
      tr.appendChild(el('td', c.reference || str('none'), 'reference'));
      tr.appendChild(el('td', c.offered_to.join(', ') || str('none')));
      rows.appendChild(tr);
    });
    tbody.replaceChildren(rows);
    document.getElementById('no-callers').hidden = board.callers.length > 0;
    document.getElementById('waiting-count').textContent = '(' + board.callers.length + ')';
  }

  function renderOperators() {
    var table = document.getElementById('operators');
    var rows = document.createDocumentFragment();
    board.operators.forEach(function (o) {
      var tr = el('tr');
      tr.setAttribute('data-user', o.user);
      tr.setAttribute('data-state', o.state);
      if (o.user === ME) {
        tr.className = 'me';
      }
      tr.appendChild(el('td', o.name));
      tr.appendChild(el('td', STATES[o.state] || o.state, 'state state-' + o.state));
      var t = el('td', o.since_ms === null ? str('none') : since(o.since_ms), 'in-state');
      if (o.since_ms !== null) {
        t.setAttribute('data-since', o.since_ms);
      }
      tr.appendChild(t);
      tr.appendChild(el('td', o.phones));
      tr.appendChild(el('td', o.misses));
      var actions = el('td', null, 'actions');
      if ((o.user === ME || ROLE === 'supervisor') && o.state !== 'offline') {
        [['available', str('set_available')], ['paused', str('set_paused')]].forEach(function (a) {
          var b = el('button', a[1]);
          b.type = 'button';
          b.setAttribute('data-set-state', a[0]);
          b.disabled = o.state === a[0];
          b.addEventListener('click', function () { setState(o.user, a[0], b); });
          actions.appendChild(b);
        });
      }
      tr.appendChild(actions);
      rows.appendChild(tr);
    });
    table.tBodies[0].replaceChildren(rows);
    document.getElementById('no-operators').hidden = board.operators.length > 0;
  }

  function renderOffer() {
    var section = document.getElementById('my-offer');
    var mine = board.operators.filter(function (o) {
      return o.user === ME && o.state === 'ringing' && o.offer !== null;
    })[0];
    var caller = mine && board.callers.filter(function (c) { return c.call === mine.offer; })[0];
    if (!caller) {
      section.hidden = true;
      return;
    }
    section.setAttribute('data-call', caller.call);
    document.getElementById('offer-answers').textContent = answersText(caller.answers) || str('none');
    document.getElementById('offer-reference').textContent = caller.reference || str('none');
    var w = document.getElementById('offer-waited');
    w.setAttribute('data-since', caller.waiting_since_ms);
    w.textContent = since(caller.waiting_since_ms);
    section.hidden = false;
  }

  function render() {
    renderCallers();
    renderOperators();
    renderOffer();
    document.getElementById('count-answered').textContent = board.today.answered;
    document.getElementById('count-abandoned').textContent = board.today.abandoned;
    document.getElementById('count-voicemails').textContent = board.today.voicemails;
  }

  function tick() {
    document.querySelectorAll('[data-since]').forEach(function (row) {
      var ms = Number(row.getAttribute('data-since'));
      var cell = row.tagName === 'TR' ? row.querySelector('.waited') : row;
      if (cell) {
        cell.textContent = since(ms);
      }
    });
  }

  setStatus(str('connecting'), false);
  var events = new EventSource('/events');
  events.addEventListener('board', function (ev) {
    var frame = JSON.parse(ev.data);
    offset = Date.now() - frame.now_ms;
    board = frame.board;
    document.body.setAttribute('data-board-seq', frame.seq);
    render();
    setStatus(str('live'), true);
  });
  events.addEventListener('error', function () {
    setStatus(str('reconnecting'), false);
  });
  window.setInterval(tick, 1000);
})();
