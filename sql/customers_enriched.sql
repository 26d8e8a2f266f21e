-- The golden customers with every enrichment column, one row per customer.
SELECT c.*,
       r.first_purchase_at,
       r.last_purchase_at,
       r.recency_days,
       COALESCE(r.frequency, 0) AS frequency,
       COALESCE(r.monetary_eur, CAST(0 AS DECIMAL(18, 2))) AS monetary_eur,
       r.r_score,
       r.f_score,
       r.m_score,
       CASE WHEN r.customer_id IS NOT NULL THEN concat(CAST(r.r_score AS VARCHAR), CAST(r.f_score AS VARCHAR), CAST(r.m_score AS VARCHAR)) END AS rfm_score,
       COALESCE(v.historical_revenue_eur, CAST(0 AS DECIMAL(18, 2)) - x.refunds_eur, CAST(0 AS DECIMAL(18, 2))) AS historical_revenue_eur,
       COALESCE(x.refunds_eur, CAST(0 AS DECIMAL(18, 2))) AS refunds_eur,
       v.average_order_value_eur,
       v.purchases_per_year,
       v.expected_lifetime_years,
       COALESCE(v.predicted_clv_eur, CAST(0 AS DECIMAL(18, 2))) AS predicted_clv_eur,
       l.last_sign_of_life_at,
       l.last_sign_of_life_channel,
       l.days_since_last_sign_of_life,
       COALESCE(l.churn_risk, 'high') AS churn_risk,
       e.emails_received,
       e.emails_opened,
       e.emails_clicked,
       e.open_rate,
       e.click_rate,
       e.unsubscribed,
       p.preferred_channel,
       p.favourite_category,
       p.cohort_month,
       COALESCE(i.downloaded_brochure_30d, false) AS downloaded_brochure_30d,
       COALESCE(i.requested_demo_30d, false) AS requested_demo_30d,
       s.segment
-- segments (one row per customer, like customers) on the left of the first join: of two
-- tables with as many rows, DataFusion keeps the left one in the join's hash table, and
-- the customers' rows are the wide ones. After a join it knows no sizes, so this join
-- comes first; the later tables are smaller and go in the hash table anyway.
FROM segments s
RIGHT JOIN customers c ON c.customer_id = s.customer_id
LEFT JOIN rfm r ON r.customer_id = c.customer_id
LEFT JOIN clv v ON v.customer_id = c.customer_id
LEFT JOIN refunds x ON x.customer_id = c.customer_id
LEFT JOIN last_sign_of_life l ON l.customer_id = c.customer_id
LEFT JOIN email_engagement e ON e.customer_id = c.customer_id
LEFT JOIN preferences p ON p.customer_id = c.customer_id
LEFT JOIN intent i ON i.customer_id = c.customer_id
