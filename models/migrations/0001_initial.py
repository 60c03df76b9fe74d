from tortoise import migrations
from tortoise.migrations import operations as ops
from models.tables import JSONTextField
from tortoise.fields.base import OnDelete
from tortoise import fields
from tortoise.indexes import Index

class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name='Workflow',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('name', fields.CharField(max_length=255)),
                ('description', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('updated_at', fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={'table': 'workflows', 'app': 'models', 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Execution',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.ForeignKeyField('models.Workflow', source_field='workflow_id', db_constraint=True, to_field='id', related_name='executions', on_delete=OnDelete.CASCADE)),
                ('status', fields.CharField(default='pending', max_length=16)),
                ('idempotency_key', fields.CharField(null=True, max_length=255)),
                ('error', fields.TextField(null=True, unique=False)),
                ('created_at', fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ('started_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('lease_owner', fields.CharField(null=True, max_length=64)),
                ('lease_expires_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('version', fields.IntField(default=0)),
            ],
            options={'table': 'executions', 'app': 'models', 'unique_together': (('workflow_id', 'idempotency_key'),), 'indexes': [Index(fields=['status', 'lease_expires_at'])], 'pk_attr': 'id', 'table_description': 'One run of a workflow. Filled in by the execution plane.'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='Task',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('workflow', fields.ForeignKeyField('models.Workflow', source_field='workflow_id', db_constraint=True, to_field='id', related_name='tasks', on_delete=OnDelete.CASCADE)),
                ('name', fields.CharField(max_length=255)),
                ('description', fields.TextField(null=True, unique=False)),
                ('order', fields.IntField()),
                ('execution_type', fields.CharField(default='sync', max_length=8)),
                ('parameters', JSONTextField(default='{}', unique=False)),
                ('action', fields.CharField(default='noop', max_length=100)),
                ('max_attempts', fields.IntField(default=1)),
                ('timeout_seconds', fields.FloatField(null=True)),
            ],
            options={'table': 'tasks', 'app': 'models', 'indexes': [Index(fields=['workflow_id', 'order'])], 'pk_attr': 'id'},
            bases=['Model'],
        ),
        ops.CreateModel(
            name='TaskRun',
            fields=[
                ('id', fields.IntField(generated=True, primary_key=True, unique=True, db_index=True)),
                ('execution', fields.ForeignKeyField('models.Execution', source_field='execution_id', db_constraint=True, to_field='id', related_name='task_runs', on_delete=OnDelete.CASCADE)),
                ('task_id', fields.IntField()),
                ('name', fields.CharField(max_length=255)),
                ('order', fields.IntField()),
                ('execution_type', fields.CharField(max_length=8)),
                ('action', fields.CharField(max_length=100)),
                ('parameters', JSONTextField(default='{}', unique=False)),
                ('max_attempts', fields.IntField(default=1)),
                ('timeout_seconds', fields.FloatField(null=True)),
                ('status', fields.CharField(default='pending', max_length=16)),
                ('attempts', fields.IntField(default=0)),
                ('interruptions', fields.IntField(default=0)),
                ('started_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('completed_at', fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ('output', JSONTextField(null=True, unique=False)),
                ('error', fields.TextField(null=True, unique=False)),
            ],
            options={'table': 'task_runs', 'app': 'models', 'unique_together': (('execution_id', 'task_id'),), 'pk_attr': 'id', 'table_description': 'A task as snapshotted when its execution started, and how running it went.'},
            bases=['Model'],
        ),
    ]
