-- The last sign of life over every channel: orders, till, service tickets, e-mail opens
-- and clicks, web sessions. "Long time no sign of life" is the churn signal.
WITH signs AS (
    SELECT customer_id, order_ts AS ts, 'web_order' AS channel FROM orders
    UNION ALL SELECT customer_id, ts, 'store_purchase' FROM pos_transactions
    UNION ALL SELECT customer_id, opened_at, 'service_ticket' FROM service
    UNION ALL SELECT customer_id, ts, concat('email_', event) FROM email_events WHERE event IN ('open', 'click')
    UNION ALL SELECT customer_id, started_at, 'web_session' FROM web_sessions
),
latest AS (
    SELECT customer_id,
           max(ts) AS last_sign_of_life_at,
           first_value(channel ORDER BY ts DESC, channel) AS last_sign_of_life_channel
    FROM signs
    WHERE customer_id IS NOT NULL AND ts IS NOT NULL AND ts < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
    GROUP BY customer_id
),
aged AS (
    SELECT *,
           (to_unixtime(TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day') - to_unixtime(last_sign_of_life_at)) / 86400.0 AS days
    FROM latest
)
SELECT customer_id,
       last_sign_of_life_at,
       last_sign_of_life_channel,
       CAST(floor(days) AS BIGINT) AS days_since_last_sign_of_life,
       CASE
           WHEN days > ${churn_days:-180} THEN 'high'
           WHEN days > ${churn_days:-180} / 2 THEN 'medium'
           ELSE 'low'
       END AS churn_risk
FROM aged
