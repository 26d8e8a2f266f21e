-- Intent signals: a brochure download or a demo request in the 30 days up to the run date.
SELECT s.customer_id,
       bool_or(s.downloaded_brochure) AS downloaded_brochure_30d,
       bool_or(s.requested_demo) AS requested_demo_30d,
       count(*) AS web_sessions_30d
FROM web_sessions s
WHERE s.customer_id IS NOT NULL
  AND s.started_at >= TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day' - INTERVAL '30 days'
  AND s.started_at < TIMESTAMP '${run_date}T00:00:00Z' + INTERVAL '1 day'
GROUP BY s.customer_id
