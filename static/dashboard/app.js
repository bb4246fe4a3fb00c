/* sfpltracker dashboard: signs in, reads /dashboard/api/<figure> and draws it.
 *
 * Every value from the server is put into the page as text (textContent), never as HTML.
 * Each shown number carries data-k="<figure path>" so the browser tests can find it; the
 * page sets data-ready on <main> once a page is drawn. Charts: uPlot (vendored, MIT).
 */
(function () {
  'use strict';

  var API = '/dashboard/api/';
  var csrf = '';
  var realtimeTimer = null;
  var charts = [];

  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') node.textContent = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    for (var i = 2; i < arguments.length; i++) {
      if (arguments[i] !== null && arguments[i] !== undefined) node.appendChild(arguments[i]);
    }
    return node;
  }

  function num(v, digits) {
    if (typeof v !== 'number') return String(v);
    return v.toLocaleString('en-US', { maximumFractionDigits: digits === undefined ? 2 : digits });
  }

  function call(method, figure, query, body) {
    var headers = { 'Accept': 'application/json' };
    if (method !== 'GET') {
      headers['Content-Type'] = 'application/json';
      headers['X-CSRF-Token'] = csrf;
    }
    return fetch(API + figure + (query ? '?' + query : ''), {
      method: method, headers: headers, credentials: 'same-origin',
      body: body === undefined ? undefined : JSON.stringify(body)
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401 && figure !== 'login') { showLogin(); }
        if (!r.ok) { var e = new Error(data.error || ('HTTP ' + r.status)); e.status = r.status; throw e; }
        return data;
      });
    });
  }

  function filters() {
    var form = $('filters');
    var params = new URLSearchParams();
    Array.prototype.forEach.call(form.elements, function (input) {
      if (input.name && input.value.trim()) params.set(input.name, input.value.trim());
    });
    return params;
  }

  // -- building blocks ------------------------------------------------------------------

  function table(title, key, rows, columns) {
    var head = el('tr', {});
    columns.forEach(function (c) { head.appendChild(el('th', { text: c.label, 'class': c.num ? 'num' : '' })); });
    var body = el('tbody', {});
    var max = 0;
    var barKey = (columns.filter(function (c) { return c.num; })[0] || {}).key;
    rows.forEach(function (r) { if (typeof r[barKey] === 'number') max = Math.max(max, r[barKey]); });
    rows.forEach(function (r, i) {
      var tr = el('tr', {});
      columns.forEach(function (c, j) {
        var v = r[c.key];
        var td = el('td', { 'data-k': key + '.' + i + '.' + c.key, 'class': c.num ? 'num' : 'label',
                            text: c.num ? num(v, c.digits) : (v === '' ? '(none)' : String(v)) });
        if (j === 0 && max && typeof r[barKey] === 'number') {
          td.style.backgroundSize = Math.round(100 * r[barKey] / max) + '% 100%';
          td.classList.add('bar');
        }
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    if (!rows.length) body.appendChild(el('tr', {}, el('td', { colspan: columns.length, 'class': 'empty', text: 'No data for these filters' })));
    return el('section', { 'class': 'card wide', 'data-table': key }, el('h2', { text: title }),
      el('table', {}, el('thead', {}, head), body));
  }

  function stat(label, key, value, previous, suffix, digits) {
    if (digits === undefined) digits = 1;
    var box = el('div', { 'class': 'stat' },
      el('div', { 'class': 'label', text: label }),
      el('div', { 'class': 'value' }, el('span', { 'data-k': key, text: num(value, digits) }),
        suffix ? el('span', { 'class': 'suffix', text: suffix }) : null));
    if (previous !== undefined) {
      var delta = (previous && typeof previous === 'number') ? Math.round(100 * (value - previous) / previous) : null;
      box.appendChild(el('div', { 'class': 'prev' },
        el('span', { text: 'previous: ' }),
        el('span', { 'data-k': key.replace('current', 'previous'), text: num(previous, digits) }),
        el('span', { 'class': delta === null ? '' : (delta >= 0 ? 'up' : 'down'),
                     text: delta === null ? '' : ' (' + (delta >= 0 ? '+' : '') + delta + '%)' })));
    }
    return box;
  }

  function chart(title, points, series) {
    var box = el('section', { 'class': 'card wide chart' }, el('h2', { text: title }));
    var holder = el('div', {});
    box.appendChild(holder);
    var xs = points.map(function (p) { return Date.parse(p.t.replace(' ', 'T') + (p.t.length > 10 ? 'Z' : 'T00:00:00Z')) / 1000; });
    var data = [xs].concat(series.map(function (s) { return points.map(function (p) { return p[s.key]; }); }));
    var colors = ['#2563eb', '#16a34a', '#db2777', '#ea580c'];
    requestAnimationFrame(function () {
      var width = Math.max(320, holder.clientWidth || 800);
      charts.push(new uPlot({
        width: width, height: 220,
        series: [{}].concat(series.map(function (s, i) {
          return { label: s.label, stroke: colors[i % colors.length], width: 2, fill: i === 0 ? 'rgba(37,99,235,0.08)' : undefined };
        })),
        axes: [{}, { size: 60 }],
        scales: { x: { time: true } }
      }, data, holder));
    });
    return box;
  }

  // -- pages --------------------------------------------------------------------------

  var PAGES = {
    overview: function (q) {
      return call('GET', 'overview', q).then(function (d) {
        var c = d.current, p = d.previous;
        var stats = el('section', { 'class': 'stats' },
          stat('Visitors', 'current.visitors', c.visitors, p.visitors),
          stat('Sessions', 'current.sessions', c.sessions, p.sessions),
          stat('Page views', 'current.pageviews', c.pageviews, p.pageviews),
          stat('Bounce rate', 'current.bounce_rate', '…', '…', '%'),
          stat('Visit duration', 'current.visit_duration', '…', '…', 's'));
        // Per session, so read from every event of the range: drawn when it comes.
        call('GET', 'engagement', q).then(function (e) {
          [['current.bounce_rate', e.current.bounce_rate], ['previous.bounce_rate', e.previous.bounce_rate],
           ['current.visit_duration', e.current.visit_duration], ['previous.visit_duration', e.previous.visit_duration]
          ].forEach(function (kv) {
            var node = stats.querySelector('[data-k="' + kv[0] + '"]');
            if (node) node.textContent = num(kv[1], 1);
          });
          stats.setAttribute('data-engagement', '1');
        }).catch(function (e) { $('error').textContent = e.message; });
        var live = el('section', { 'class': 'realtime' }, el('span', { 'class': 'dot' }),
          el('span', { 'data-k': 'realtime.visitors', text: num(d.realtime.visitors) }),
          el('span', { text: ' visitors in the last 5 minutes' }));
        realtimeTimer = setInterval(function () {
          call('GET', 'overview', q).then(function (again) {
            var node = document.querySelector('[data-k="realtime.visitors"]');
            if (node) node.textContent = num(again.realtime.visitors);
          }).catch(function () {});
        }, 30000);
        return [live, stats, chart('Visitors and page views per ' + d.bucket, d.series,
          [{ key: 'visitors', label: 'Visitors' }, { key: 'pageviews', label: 'Page views' }])];
      });
    },
    pages: function (q) {
      return Promise.all([call('GET', 'pages', q), call('GET', 'entry-exit', q)]).then(function (r) {
        return [
          table('Top pages', 'pages', r[0].pages, [{ key: 'url', label: 'Page' }, { key: 'pageviews', label: 'Views', num: true }]),
          table('Entry pages', 'entry', r[1].entry, [{ key: 'url', label: 'Page' }, { key: 'sessions', label: 'Sessions', num: true }]),
          table('Exit pages', 'exit', r[1].exit, [{ key: 'url', label: 'Page' }, { key: 'sessions', label: 'Sessions', num: true }])
        ];
      });
    },
    sources: function (q) {
      return Promise.all([call('GET', 'referrers', q), call('GET', 'campaigns', q)]).then(function (r) {
        return [
          table('Referrers', 'referrers', r[0].referrers, [{ key: 'referrer', label: 'Referrer' }, { key: 'events', label: 'Events', num: true }]),
          table('UTM campaigns', 'campaigns', r[1].campaigns, [{ key: 'source', label: 'Source' }, { key: 'medium', label: 'Medium' },
            { key: 'campaign', label: 'Campaign' }, { key: 'visitors', label: 'Visitors', num: true }, { key: 'events', label: 'Events', num: true }])
        ];
      });
    },
    locations: function (q) {
      return call('GET', 'countries', q).then(function (d) {
        return [table('Countries', 'countries', d.countries, [{ key: 'country', label: 'Country' },
          { key: 'visitors', label: 'Visitors', num: true }, { key: 'events', label: 'Events', num: true }])];
      });
    },
    devices: function (q) {
      return call('GET', 'devices', q).then(function (d) {
        var cols = function (label) { return [{ key: 'name', label: label }, { key: 'visitors', label: 'Visitors', num: true }, { key: 'events', label: 'Events', num: true }]; };
        return [table('Devices', 'device', d.device, cols('Device')), table('Browsers', 'browser', d.browser, cols('Browser')),
          table('Operating systems', 'os', d.os, cols('OS'))];
      });
    },
    goals: function (q) {
      var steps = (location.hash.split('steps=')[1] || 'page_view,signup,purchase');
      return call('GET', 'goals', q + '&steps=' + encodeURIComponent(decodeURIComponent(steps))).then(function (d) {
        return [
          table('Events (goals)', 'enames', d.enames, [{ key: 'ename', label: 'Event' }, { key: 'events', label: 'Events', num: true }, { key: 'visitors', label: 'Visitors', num: true }]),
          table('Outcomes', 'outcomes', d.outcomes, [{ key: 'outcome', label: 'Outcome' }, { key: 'events', label: 'Events', num: true }]),
          table('Funnel (within ' + Math.round((d.window_seconds || 0) / 86400) + ' days)', 'funnel', d.funnel, [{ key: 'step', label: 'Step' }, { key: 'visitors', label: 'Visitors', num: true }])
        ];
      });
    },
    links: function (q) {
      return call('GET', 'links', q).then(function (d) {
        return [chart('Short-link clicks per day', d.clicks, [{ key: 'clicks', label: 'Clicks' }]),
          table('Short links', 'links', d.links, [{ key: 'urlfrom', label: 'Link' }, { key: 'clicks', label: 'Clicks', num: true }, { key: 'urlto', label: 'Destination' }])];
      });
    },
    revenue: function (q) {
      return call('GET', 'revenue', q).then(function (d) {
        var t = d.totals;
        return [
          el('section', { 'class': 'stats' }, stat('Revenue', 'totals.revenue', t.revenue, undefined, '', 2), stat('Payments', 'totals.payments', t.payments),
            stat('Customers', 'totals.customers', t.customers)),
          chart('Revenue per day and lifetime revenue', d.series, [{ key: 'revenue', label: 'Revenue' }, { key: 'lifetime_revenue', label: 'Lifetime' }]),
          table('Top customers by lifetime value', 'top_customers', d.top_customers, [{ key: 'uid', label: 'User' }, { key: 'ltv', label: 'LTV', num: true }, { key: 'payments', label: 'Payments', num: true }])
        ];
      });
    },
    consent: function (q) {
      var names = { 256: 'essential', 512: 'preferences', 1024: 'analytics', 2048: 'personalization', 4096: 'marketing', 8192: 'sale_sharing' };
      return call('GET', 'consent', q).then(function (d) {
        var rows = d.decisions.map(function (r) {
          var cats = Object.keys(names).filter(function (b) { return r.cflags & b; }).map(function (b) { return names[b]; });
          return { jurisdiction: r.jurisdiction, decisions: r.decisions, cflags: r.cflags, categories: cats.join(', ') || '(none)', visitors: r.visitors };
        });
        return [table('Consent decisions', 'decisions', rows, [{ key: 'jurisdiction', label: 'Jurisdiction' }, { key: 'decisions', label: 'Decisions', num: true },
          { key: 'cflags', label: 'cflags', num: true, digits: 0 }, { key: 'categories', label: 'Categories' }, { key: 'visitors', label: 'Visitors', num: true }])];
      });
    }
  };

  function show() {
    var name = (location.hash.replace('#', '').split('&')[0]) || 'overview';
    if (!PAGES[name]) name = 'overview';
    var main = $('page');
    main.removeAttribute('data-ready');
    if (realtimeTimer) { clearInterval(realtimeTimer); realtimeTimer = null; }
    charts.forEach(function (c) { c.destroy(); });
    charts = [];
    Array.prototype.forEach.call($('nav').children, function (a) {
      a.classList.toggle('active', a.getAttribute('href') === '#' + name);
    });
    $('error').textContent = '';
    PAGES[name](filters().toString()).then(function (nodes) {
      main.replaceChildren.apply(main, nodes);
      main.setAttribute('data-page', name);
      main.setAttribute('data-ready', '1');
    }).catch(function (e) {
      if (e.status !== 401) $('error').textContent = e.message;
    });
  }

  function showLogin() {
    $('app').hidden = true;
    $('login').hidden = false;
  }

  function showApp(session) {
    csrf = session.csrf;
    $('who').textContent = session.org ? 'org ' + session.org : '';
    $('login').hidden = true;
    $('app').hidden = false;
    show();
  }

  $('login-form').addEventListener('submit', function (ev) {
    ev.preventDefault();
    var f = ev.target;
    $('login-error').textContent = '';
    call('POST', 'login', '', { uid: f.uid.value.trim(), secret: f.secret.value }).then(showApp).catch(function (e) {
      $('login-error').textContent = e.message;
    });
  });
  $('logout').addEventListener('click', function () {
    call('POST', 'logout', '', {}).then(showLogin).catch(function (e) { $('error').textContent = e.message; });
  });
  $('filters').addEventListener('submit', function (ev) { ev.preventDefault(); show(); });
  window.addEventListener('hashchange', function () { if (!$('app').hidden) show(); });

  // 200 either way (a 401 here would be logged as a console error on every first visit)
  call('GET', 'session').then(function (s) { if (s.signed_in) showApp(s); else showLogin(); }).catch(showLogin);
})();
