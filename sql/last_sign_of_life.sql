-- The last sign of life over every channel: orders, till, service tickets, e-mail opens
-- and clicks, web sessions. "Long time no sign of life" is the churn signal.
WITH signs AS (
    SELECT customer_id, order_ts AS ts, 'web_order' AS channel FROM orders
    UNION ALL SELECT customer_id, ts, 'store_purchase' FROM pos_transactions
    UNION ALL SELECT customer_id, opened_at, 'service_ticket' FROM service
    UNION ALL SELECT customer_id, ts, concat('email_', event) FROM email_events WHERE event IN ('open', 'click')
    UNION ALL SELECT customer_id, started_at, 'web_session' FROM web_sessions
),
as_of AS (
    SELECT TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' AS t
),
latest AS (
    SELECT s.customer_id,
           max(s.ts) AS last_sign_of_life_at,
           first_value(s.channel ORDER BY s.ts DESC, s.channel) AS last_sign_of_life_channel
    FROM signs s CROSS JOIN as_of a
    WHERE s.customer_id IS NOT NULL AND s.ts IS NOT NULL AND s.ts < a.t
    GROUP BY s.customer_id
)
SELECT l.customer_id,
       l.last_sign_of_life_at,
       l.last_sign_of_life_channel,
       CAST(floor((to_unixtime(a.t) - to_unixtime(l.last_sign_of_life_at)) / 86400) AS BIGINT) AS days_since_last_sign_of_life,
       CASE
           WHEN (to_unixtime(a.t) - to_unixtime(l.last_sign_of_life_at)) / 86400 > ${churn_days:-180} THEN 'high'
           WHEN (to_unixtime(a.t) - to_unixtime(l.last_sign_of_life_at)) / 86400 > ${churn_days:-180} / 2 THEN 'medium'
           ELSE 'low'
       END AS churn_risk
FROM latest l CROSS JOIN as_of a
