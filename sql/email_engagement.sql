-- E-mail engagement per customer, per campaign (a customer with two subscriptions is not
-- counted twice): campaigns received, opened, clicked, and whether they unsubscribed.
WITH per_campaign AS (
    SELECT customer_id,
           campaign_id,
           bool_or(event = 'sent') AS sent,
           bool_or(event = 'open') AS opened,
           bool_or(event = 'click') AS clicked,
           bool_or(event = 'unsubscribe') AS unsubscribed
    FROM email_events
    WHERE customer_id IS NOT NULL
    GROUP BY customer_id, campaign_id
)
SELECT customer_id,
       sum(CASE WHEN sent THEN 1 ELSE 0 END) AS emails_received,
       sum(CASE WHEN opened THEN 1 ELSE 0 END) AS emails_opened,
       sum(CASE WHEN clicked THEN 1 ELSE 0 END) AS emails_clicked,
       round(CAST(sum(CASE WHEN opened THEN 1 ELSE 0 END) AS DOUBLE) / NULLIF(sum(CASE WHEN sent THEN 1 ELSE 0 END), 0), 4) AS open_rate,
       round(CAST(sum(CASE WHEN clicked THEN 1 ELSE 0 END) AS DOUBLE) / NULLIF(sum(CASE WHEN sent THEN 1 ELSE 0 END), 0), 4) AS click_rate,
       bool_or(unsubscribed) AS unsubscribed
FROM per_campaign
GROUP BY customer_id
