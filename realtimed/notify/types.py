"""The built-in notification types, and the table of types a node serves.

An operator adds types with ``[[notify.types]]``; one with the name of a
built-in replaces it, and ``notify.builtin_types = false`` drops them all.
"""

from __future__ import annotations

from typing import Final

from realtimed.config import NotificationTypeConfig, NotifyConfig

__all__ = ["BUILTIN_TYPES", "type_table"]

T = NotificationTypeConfig

BUILTIN_TYPES: Final[tuple[NotificationTypeConfig, ...]] = (
    # Chat: also the type of the pushes for messages to offline participants.
    T(
        name="new_message",
        title="{sender_name}",
        body="{body}",
        vars=["sender_name", "body", "conversation_id"],
        priority="high",
        group_by="conversation_id",
        digest_window_s=60.0,
        digest_title="{sender_name}",
        digest_body="{count} new messages from {sender_name}",
        private_title="New message",
        private_body="",
        android_channel_id="messages",
        hourly_cap=60,
        ttl_s=86400.0,
    ),
    # Social.
    T(
        name="new_follower",
        title="New follower",
        body="{follower_name} started following you",
        vars=["follower_name"],
        digest_window_s=600.0,
        digest_title="New followers",
        digest_body="{count} people started following you",
        private_title="New follower",
    ),
    T(
        name="post_like",
        title="New like",
        body="{liker_name} liked your post",
        vars=["liker_name", "post_id"],
        priority="low",
        group_by="post_id",
        digest_window_s=600.0,
        digest_title="New likes",
        digest_body="{count} people liked your post",
        private_title="New like",
    ),
    T(
        name="post_comment",
        title="New comment",
        body="{commenter_name}: {comment}",
        vars=["commenter_name", "comment", "post_id"],
        group_by="post_id",
        digest_window_s=300.0,
        digest_title="New comments",
        digest_body="{count} new comments on your post",
        private_title="New comment",
    ),
    T(
        name="mention",
        title="{mentioner_name} mentioned you",
        body="{excerpt}",
        vars=["mentioner_name", "excerpt"],
        priority="high",
        private_title="You were mentioned",
    ),
    # Jobs.
    T(
        name="job_completed",
        title="Done: {job_name}",
        body="{job_name} has finished",
        vars=["job_name"],
        private_title="A job has finished",
    ),
    T(
        name="job_failed",
        title="Failed: {job_name}",
        body="{job_name} failed: {error}",
        vars=["job_name", "error"],
        priority="high",
        private_title="A job has failed",
    ),
    # System.
    T(
        name="announcement",
        title="{title}",
        body="{body}",
        vars=["title", "body"],
        private_title="{title}",
    ),
)


def type_table(cfg: NotifyConfig) -> dict[str, NotificationTypeConfig]:
    """The types this configuration serves, by name (configured ones win)."""
    table = {t.name: t for t in BUILTIN_TYPES} if cfg.builtin_types else {}
    table.update({t.name: t for t in cfg.types})
    return table
